//! `registry`: list, show, publish and alias model versions by hand.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use flywheel_registry::{ManifestDraft, Registry};

/// Operate a Flywheel model registry.
#[derive(Parser)]
struct Cli {
    /// Registry root folder.
    #[arg(long, env = "FLYWHEEL_REGISTRY", default_value = "var/models")]
    root: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Models, or one model's versions and aliases.
    List { model: Option<String> },
    /// A version's manifest (a number, an alias or `latest`).
    Show { model: String, version: String },
    /// Publish an ONNX file as the next version.
    Publish {
        model: String,
        file: PathBuf,
        #[arg(long)]
        parent: Option<u64>,
        #[arg(long)]
        description: Option<String>,
        /// Also point this alias at the new version.
        #[arg(long)]
        alias: Option<String>,
    },
    /// Move or remove an alias.
    Alias {
        #[command(subcommand)]
        action: AliasCmd,
    },
}

#[derive(Subcommand)]
enum AliasCmd {
    /// Point ALIAS at VERSION (a number, another alias or `latest`).
    Set { model: String, alias: String, version: String },
    /// Remove ALIAS.
    Rm { model: String, alias: String },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let registry = Registry::open(&cli.root);
    match cli.command {
        Cmd::List { model: None } => {
            for model in registry.models()? {
                let (versions, _) = registry.versions(&model)?;
                let aliases = registry.aliases(&model)?;
                println!("{model}\tversions {}\taliases {aliases:?}", versions.len());
            }
        }
        Cmd::List { model: Some(model) } => {
            let (versions, skipped) = registry.versions(&model)?;
            let aliases = registry.aliases(&model)?;
            for entry in versions {
                let names: Vec<&str> =
                    aliases.iter().filter(|(_, v)| **v == entry.version).map(|(a, _)| a.as_str()).collect();
                let created = match &entry.manifest {
                    Some(Ok(m)) => m.created_at.clone(),
                    Some(Err(e)) => format!("manifest unreadable: {e}"),
                    None => "no manifest".into(),
                };
                println!("{}\t{created}\t{}", entry.version, names.join(","));
            }
            for s in skipped {
                eprintln!("skipped {}: {}", s.path.display(), s.reason);
            }
        }
        Cmd::Show { model, version } => {
            let version = registry.resolve(&model, &version)?;
            let entry = registry.version(&model, version)?;
            match entry.manifest {
                Some(Ok(m)) => println!("{}", serde_json::to_string_pretty(&m)?),
                Some(Err(e)) => anyhow::bail!("{model} version {version}: manifest unreadable: {e}"),
                None => println!("{{\"model\": {model:?}, \"version\": {version}, \"manifest\": null}}"),
            }
        }
        Cmd::Publish { model, file, parent, description, alias } => {
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let draft = ManifestDraft { parent_version: parent, description, ..Default::default() };
            let manifest = registry.publish(&model, &bytes, draft)?;
            if let Some(alias) = alias {
                registry.set_alias(&model, &alias, manifest.version)?;
            }
            println!("published {model} version {} (sha256 {})", manifest.version, manifest.sha256);
        }
        Cmd::Alias { action: AliasCmd::Set { model, alias, version } } => {
            let version = registry.resolve(&model, &version)?;
            registry.set_alias(&model, &alias, version)?;
            println!("{model}: {alias} -> {version}");
        }
        Cmd::Alias { action: AliasCmd::Rm { model, alias } } => {
            if !registry.remove_alias(&model, &alias)? {
                anyhow::bail!("{model} has no alias '{alias}'");
            }
            println!("{model}: removed {alias}");
        }
    }
    Ok(())
}
