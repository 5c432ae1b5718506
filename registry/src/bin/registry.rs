//! `registry`: list, show, publish, alias, sign and verify model versions by hand.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::sync::Arc;

use flywheel_registry::{
    ManifestDraft, Registry, Remote, Signer, TrustedKeys, is_remote, lineage, lineage_store, signing, valid_alias,
};

/// A folder removed (with what it holds) when this is dropped.
struct RemovedOnDrop(PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Operate a Flywheel model registry.
#[derive(Parser)]
struct Cli {
    /// Registry root: a folder, or an object store URL (s3://bucket/prefix, gs://, az://)
    /// configured by the store's standard environment variables (AWS_ENDPOINT_URL, ...).
    #[arg(long, env = "FLYWHEEL_REGISTRY", default_value = "var/models")]
    root: String,
    /// Ed25519 private key (PKCS#8 PEM) that signs what `publish` and `sign` write.
    #[arg(long, env = "FLYWHEEL_SIGNING_KEY", global = true)]
    signing_key: Option<PathBuf>,
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
    /// Write a new Ed25519 key pair: PREFIX.pem (private, owner-only) and PREFIX.pub.pem (for
    /// the gateway's `trusted_keys`).
    Keygen { prefix: PathBuf },
    /// Sign a published, unsigned version with `--signing-key`.
    Sign { model: String, version: String },
    /// The lineage of one served request: its sample rows, the version that answered, that
    /// version's data (re-checked), code, gate, trigger, decisions and approvals, and its
    /// ancestors back to the first version. Exit status 1 when a data re-check fails.
    Lineage {
        /// The gateway's request id (`x-flywheel-request-id` of the answer).
        #[arg(long)]
        request_id: String,
        /// Look in this model's samples only.
        #[arg(long)]
        model: Option<String>,
        /// The sample folder; default `samples` beside the registry root. With a registry in
        /// object storage, the sample store's URL; default `<root>/.data`.
        #[arg(long)]
        samples: Option<String>,
        /// Audit log (repeat for several, e.g. one per replica); default `<root>/audit.jsonl`.
        /// With a registry in object storage the fleet's audit records there are read too.
        #[arg(long = "audit")]
        audit_logs: Vec<PathBuf>,
        /// JSON instead of the report.
        #[arg(long)]
        json: bool,
        /// Do not re-assemble training rows to re-check data digests.
        #[arg(long)]
        no_verify: bool,
    },
    /// Write a version's reference profile (drift detection) and explanation background from
    /// a CSV of its training rows: a header of feature names (the gateway's sample columns,
    /// `in_<input>_<i>`), then one row of numbers per line.
    Profile {
        model: String,
        version: String,
        #[arg(long)]
        rows: PathBuf,
    },
    /// Check a version's signature against trusted public keys (exit status 1 if it fails).
    Verify {
        model: String,
        version: String,
        /// SPKI PEM public keys; several for a rotation.
        #[arg(long = "trusted-key", required = true)]
        trusted_keys: Vec<PathBuf>,
    },
}

/// A profile of the rows in a CSV file (header of names, then numbers); errors name the line.
fn profile_from_csv(path: &std::path::Path) -> anyhow::Result<flywheel_registry::ReferenceProfile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().ok_or_else(|| anyhow::anyhow!("{}: empty (no header line)", path.display()))?;
    let names: Vec<String> = header.split(',').map(|n| n.trim().to_owned()).collect();
    let mut rows = Vec::new();
    for (n, line) in lines {
        let row = line
            .split(',')
            .enumerate()
            .map(|(c, v)| {
                v.trim().parse::<f64>().map_err(|_| {
                    anyhow::anyhow!(
                        "{} line {}: column {} ({}) is not a number: {v:?}",
                        path.display(),
                        n + 1,
                        c + 1,
                        names.get(c).map_or("?", |s| s.as_str())
                    )
                })
            })
            .collect::<anyhow::Result<Vec<f64>>>()?;
        anyhow::ensure!(
            row.len() == names.len(),
            "{} line {}: {} values, but the header names {} columns",
            path.display(),
            n + 1,
            row.len(),
            names.len()
        );
        rows.push(row);
    }
    anyhow::ensure!(!rows.is_empty(), "{}: no rows after the header", path.display());
    Ok(flywheel_registry::ReferenceProfile::from_rows(&names, &rows, None, 2000))
}

/// The `--signing-key`, read when a command needs it.
fn signer(path: Option<&PathBuf>) -> anyhow::Result<Option<Arc<Signer>>> {
    path.map(|p| Signer::from_pem_file(p).map(Arc::new).map_err(anyhow::Error::msg)).transpose()
}

fn required_signer(path: Option<&PathBuf>) -> anyhow::Result<Arc<Signer>> {
    signer(path)?.ok_or_else(|| anyhow::anyhow!("give the private key with --signing-key (or FLYWHEEL_SIGNING_KEY)"))
}

#[derive(Subcommand)]
enum AliasCmd {
    /// Point ALIAS at VERSION (a number, another alias or `latest`).
    Set { model: String, alias: String, version: String },
    /// Remove ALIAS.
    Rm { model: String, alias: String },
}

/// What `registry lineage` was asked.
struct LineageQuery<'a> {
    request_id: &'a str,
    model: Option<&'a str>,
    samples: Option<&'a str>,
    audit_logs: &'a [PathBuf],
}

/// `registry lineage`: over a folder, or over a store copied into a fresh folder for this query
/// (removed when it ends). Fails when a version's data does not re-verify.
fn lineage_main(root: &str, query: &LineageQuery, json: bool, verify_data: bool) -> anyhow::Result<()> {
    let copy_dir = is_remote(root).then(|| {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        std::env::temp_dir().join(format!("flywheel-lineage-{}-{}", std::process::id(), nanos.as_nanos()))
    });
    let _removed = copy_dir.clone().map(RemovedOnDrop);
    let copied = match &copy_dir {
        Some(dir) => Some(lineage_store::copy(root, query.samples, query.model, dir, verify_data)?),
        None => None,
    };
    let folder;
    let (registry, mut sources) = match &copied {
        Some(copied) => {
            for problem in &copied.problems {
                eprintln!("registry copy: {problem}");
            }
            (&copied.registry, copied.sources.clone())
        }
        None => {
            let root = PathBuf::from(root.strip_prefix("file://").unwrap_or(root));
            let beside = root.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
            let sources = lineage::Sources {
                sample_dir: query.samples.map_or_else(|| beside.join("samples"), PathBuf::from),
                audit_logs: vec![root.join("audit.jsonl")],
                verify_data,
            };
            folder = Registry::open(&root);
            (&folder, sources)
        }
    };
    // Logs given replace a folder's default log; a store's audit records are kept.
    if !query.audit_logs.is_empty() {
        sources.audit_logs.retain(|_| copied.is_some());
        sources.audit_logs.extend(query.audit_logs.iter().cloned());
    }
    let mut found = lineage::lineage(registry, &sources, query.request_id, query.model)?;
    if let Some(copied) = &copied {
        copied.name_in_store(&mut found);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&found)?);
    } else {
        print!("{}", lineage::report(&found));
    }
    let failed: Vec<String> = found
        .versions
        .iter()
        .filter(|v| v.data_check.as_ref().is_some_and(|c| !c.verified))
        .map(|v| v.version.to_string())
        .collect();
    anyhow::ensure!(failed.is_empty(), "the training data of version(s) {} did not re-verify", failed.join(", "));
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Cmd::Keygen { prefix } = &cli.command {
        let (key_id, private, public) = signing::generate_key_pair(prefix).map_err(anyhow::Error::msg)?;
        println!("key {key_id}: private {} (keep it secret), public {}", private.display(), public.display());
        return Ok(());
    }
    if let Cmd::Lineage { request_id, model, samples, audit_logs, json, no_verify } = &cli.command {
        let query = LineageQuery { request_id, model: model.as_deref(), samples: samples.as_deref(), audit_logs };
        return lineage_main(&cli.root, &query, *json, !no_verify);
    }
    if is_remote(&cli.root) {
        return remote_main(&*Remote::shared(&cli.root)?, cli.command, cli.signing_key.as_ref());
    }
    let mut registry = Registry::open(cli.root.strip_prefix("file://").unwrap_or(&cli.root));
    match cli.command {
        Cmd::Keygen { .. } | Cmd::Lineage { .. } => {}
        Cmd::Profile { model, version, rows } => {
            let version = registry.resolve(&model, &version)?;
            let profile = profile_from_csv(&rows)?;
            registry.write_profile(&model, version, &profile)?;
            println!(
                "{model} version {version}: profile of {} rows, {} features, {} background rows",
                profile.rows,
                profile.features.len(),
                profile.background.len()
            );
        }
        Cmd::Sign { model, version } => {
            let signer = required_signer(cli.signing_key.as_ref())?;
            let version = registry.resolve(&model, &version)?;
            registry.sign_version(&model, version, &signer)?;
            println!("signed {model} version {version} with key {}", signer.key_id());
        }
        Cmd::Verify { model, version, trusted_keys } => {
            let trusted = TrustedKeys::from_files(&trusted_keys).map_err(anyhow::Error::msg)?;
            let version = registry.resolve(&model, &version)?;
            let entry = registry.version(&model, version)?;
            let verified = registry.verify(&entry)?;
            match registry.check_signature(&entry, &trusted, Some(&verified.sha256)).map_err(anyhow::Error::msg)? {
                Some(key) => println!("{model} version {version}: model and manifest signed by key {key}"),
                None => anyhow::bail!("{model} version {version} is not signed"),
            }
        }
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
            if let Some(signer) = signer(cli.signing_key.as_ref())? {
                registry = registry.with_signer(signer);
            }
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

/// The same commands against an object store, request by request.
fn remote_main(remote: &Remote, command: Cmd, signing_key: Option<&PathBuf>) -> anyhow::Result<()> {
    match command {
        Cmd::Keygen { .. } | Cmd::Lineage { .. } => {}
        Cmd::Profile { model, version, rows } => {
            let version = remote.resolve(&model, &version)?;
            remote.write_profile(&model, version, serde_json::to_vec(&profile_from_csv(&rows)?)?)?;
            println!("{model} version {version}: profile written");
        }
        Cmd::Sign { model, version } => {
            let signer = required_signer(signing_key)?;
            let version = remote.resolve(&model, &version)?;
            if !remote.sign_version(&model, version, &signer)? {
                anyhow::bail!("{model} version {version} is already signed; left as it is");
            }
            println!("signed {model} version {version} with key {}", signer.key_id());
        }
        Cmd::Verify { model, version, trusted_keys } => {
            let trusted = TrustedKeys::from_files(&trusted_keys).map_err(anyhow::Error::msg)?;
            let version = remote.resolve(&model, &version)?;
            let (manifest, bytes) = remote.manifest_file(&model, version)?;
            remote.model_bytes(&model, version, &manifest)?;
            let Some(signature) = remote.signature(&model, version)? else {
                anyhow::bail!("{model} version {version} is not signed");
            };
            let key = trusted.verify(&bytes, &signature).map_err(anyhow::Error::msg)?;
            println!("{model} version {version}: model and manifest signed by key {key}");
        }
        Cmd::List { model: None } => {
            for model in remote.models()? {
                let versions = remote.listing(&model)?.committed.len();
                println!("{model}\tversions {versions}\taliases {:?}", remote.aliases(&model)?);
            }
        }
        Cmd::List { model: Some(model) } => {
            let listing = remote.listing(&model)?;
            let aliases = remote.aliases(&model)?;
            for &version in &listing.committed {
                let names: Vec<&str> =
                    aliases.iter().filter(|(_, v)| **v == version).map(|(a, _)| a.as_str()).collect();
                let created = remote.manifest(&model, version).map_or_else(|e| e.to_string(), |m| m.created_at);
                println!("{version}\t{created}\t{}", names.join(","));
            }
            let uncommitted = listing.highest_claimed.saturating_sub(listing.committed.last().copied().unwrap_or(0));
            if uncommitted > 0 {
                eprintln!("{uncommitted} version number(s) above the newest have no manifest (uploading or abandoned)");
            }
        }
        Cmd::Show { model, version } => {
            let version = remote.resolve(&model, &version)?;
            println!("{}", serde_json::to_string_pretty(&remote.manifest(&model, version)?)?);
        }
        Cmd::Publish { model, file, parent, description, alias } => {
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            if let Some(alias) = alias.as_deref().filter(|a| !valid_alias(a)) {
                anyhow::bail!("alias name '{alias}' is not valid: use letters, digits, '_' and '-'");
            }
            let draft = ManifestDraft { parent_version: parent, description, ..Default::default() };
            let signer = signer(signing_key)?;
            let manifest = remote.publish(&model, &bytes, draft, None, signer.as_deref())?.manifest;
            if let Some(alias) = alias {
                remote.update_aliases(&model, |aliases| {
                    aliases.insert(alias.clone(), manifest.version);
                    Ok(())
                })?;
            }
            println!("published {model} version {} (sha256 {})", manifest.version, manifest.sha256);
        }
        Cmd::Alias { action: AliasCmd::Set { model, alias, version } } => {
            if !valid_alias(&alias) {
                anyhow::bail!("alias name '{alias}' is not valid: use letters, digits, '_' and '-'");
            }
            let version = remote.resolve(&model, &version)?;
            remote.update_aliases(&model, |aliases| {
                aliases.insert(alias.clone(), version);
                Ok(())
            })?;
            println!("{model}: {alias} -> {version}");
        }
        Cmd::Alias { action: AliasCmd::Rm { model, alias } } => {
            let mut existed = false;
            remote.update_aliases(&model, |aliases| {
                existed = aliases.remove(&alias).is_some();
                Ok(())
            })?;
            if !existed {
                anyhow::bail!("{model} has no alias '{alias}'");
            }
            println!("{model}: removed {alias}");
        }
    }
    Ok(())
}
