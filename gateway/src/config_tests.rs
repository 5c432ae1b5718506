//! Config parsing and validation: each rejected value, overrides, the shipped files.

use super::*;

#[test]
fn a_full_config_parses_and_overrides_inherit() {
    let c = Config::parse(
        r#"
        listen = "0.0.0.0:9000"
        admin_token = "0123456789abcdef"
        feedback_token = "fedcba9876543210"
        model_repository = "models"
        [batching]
        max_batch_size = 32
        [models.fraud]
        instances = 2
        "#,
    )
    .unwrap();
    c.validate().unwrap();
    assert_eq!(c.listen.port(), 9000);
    let fraud = c.batching_for("fraud");
    assert_eq!((fraud.max_batch_size, fraud.instances), (32, 2));
    assert_eq!(c.batching_for("other").instances, 1);
}

#[test]
fn each_bad_value_is_rejected_naming_key_and_value() {
    let cases = [
        ("[batching]\nmax_batch_size = 100000", "batching.max_batch_size must be in 0..=65536, given 100000"),
        ("[batching]\nqueue_capacity = 0", "batching.queue_capacity must be in 1..=1000000, given 0"),
        ("[models.m]\ninstances = 0", "models.m.instances must be in 1..=64, given 0"),
        ("[models.m]\nmax_queue_delay_us = 5000000", "models.m.max_queue_delay_us"),
        ("[models.m]\ninline_max_us = 20000", "models.m.inline_max_us must be in 0..=10000, given 20000"),
        ("max_body_bytes = 10", "max_body_bytes must be at least 1024, given 10"),
        ("admin_token = \"\"", "admin_token must be at least 16 characters, given one of 0"),
        ("feedback_token = \"short\"", "feedback_token must be at least 16 characters, given one of 5"),
        (
            "listen = \"0.0.0.0:8000\"",
            "listen = 0.0.0.0:8000 is reachable from other hosts, so admin_token and feedback_token must be set",
        ),
        ("listen = \"10.0.0.1:8000\"\nadmin_token = \"0123456789abcdef\"", "so feedback_token must be set"),
        ("max_in_flight = 2000000", "max_in_flight must be at most 1000000"),
        ("max_body_bytes = 2000000000", "must not exceed server.max_in_flight_bytes"),
        ("[server]\nheader_timeout_ms = 0", "server.header_timeout_ms must be in 100..=600000, given 0"),
        ("controller_interval_ms = 0", "controller_interval_ms must be in 10..=3600000, given 0"),
        ("version_policy = { latest = 0 }", "version_policy.latest must be in 1..=1000, given 0"),
        (
            "[models.m]\nversion_policy = { specific = [] }",
            "models.m.version_policy.specific must name at least one version",
        ),
        (
            "[models.m]\nversion_policy = \"all\"\n[models.m.rollout]\nchampion = \"champion\"",
            "models.m: version_policy and rollout cannot both be set",
        ),
        ("max_warmup_bytes = 10", "max_warmup_bytes must be in 1048576..=68719476736, given 10"),
        ("max_model_file_bytes = 0", "max_model_file_bytes must be in 1024..=68719476736, given 0"),
        (
            "[sampling]\nchannel_capacity = 100000000",
            "sampling.channel_capacity must be in 1..=1000000, given 100000000",
        ),
        ("[sampling]\nmax_file_bytes = 0", "sampling.max_file_bytes must be in 4096..=1099511627776, given 0"),
        ("[sampling]\nmax_rows_per_file = 0", "sampling.max_rows_per_file must be in 1..=100000000, given 0"),
        ("[sampling]\nrow_group_rows = 0", "sampling.row_group_rows"),
        ("[sampling]\nmax_file_age_ms = 50", "sampling.max_file_age_ms must be in 100..=86400000, given 50"),
        ("[sampling]\nlabel_window_ms = 0", "sampling.label_window_ms"),
        ("[sampling]\nkeep_uncertain_within = 0.7", "sampling.keep_uncertain_within must be in 0..=0.5"),
        ("[sampling]\nkeep_uncertain_within = -0.1", "sampling.keep_uncertain_within"),
        ("[drift]\nadwin_delta = 0.0", "drift.adwin_delta must be in (0, 1), given 0"),
        ("[drift]\nadwin_delta = -1.0", "drift.adwin_delta"),
        ("[drift]\npsi_threshold = 0.0", "drift.psi_threshold must be in (0, 100], given 0"),
        ("[drift]\npage_hinkley_lambda = -5.0", "drift.page_hinkley_lambda"),
        ("[drift]\npage_hinkley_delta = -0.1", "drift.page_hinkley_delta must be in 0..=1e9"),
        ("[drift]\nmax_nan_rate_increase = 2.0", "drift.max_nan_rate_increase must be in 0..=1, given 2"),
        ("[drift]\nmax_out_of_range = -0.5", "drift.max_out_of_range"),
        ("[drift]\nddm_min_samples = 0", "drift.ddm_min_samples must be in 1..=1000000000, given 0"),
        ("[drift]\nks_alpha = 1.5", "drift.ks_alpha must be in (0, 1), given 1.5"),
        ("[drift]\nrate = 3.0", "drift.rate must be in 0..=1, given 3"),
        ("[sampling]\nrate = 2.0", "sampling.rate must be in 0..=1, given 2"),
        ("[models.m]\nsample_rate = -0.5", "models.m.sample_rate must be in 0..=1, given -0.5"),
        ("[drift]\nwindow_rows = 5", "drift.window_rows must be in 50..=10000000, given 5"),
        (
            "[drift]\nmax_rows_per_second = 20000000",
            "drift.max_rows_per_second must be in 0..=10000000 (0: no limit), given 20000000",
        ),
        ("[models.\"a/b\"]\ninstances = 1", "models.a/b"),
        (
            "[models.m.rollout.canary]\nversion = \"2\"\nweight = 140",
            "models.m.rollout.canary.weight must be in 0..=100, given 140",
        ),
        (
            "[models.m.rollout.shadow]\nversion = \"2\"\nfraction = 1.5",
            "models.m.rollout.shadow.fraction must be in 0..=1, given 1.5",
        ),
        (
            "[models.m.rollout]\nchampion = \"../x\"",
            "models.m.rollout.champion must be a version number, an alias or 'latest'",
        ),
        (
            "grpc_max_message_bytes = 33554432\nmax_body_bytes = 1048576\n[server]\nmax_in_flight_bytes = 16777216",
            "grpc_max_message_bytes (33554432) must not exceed server.max_in_flight_bytes (16777216)",
        ),
        ("grpc_max_message_bytes = 100", "grpc_max_message_bytes must be in 1024..=2147483647"),
        ("require_signature = true", "require_signature is set but trusted_keys is empty"),
        (
            "[[credentials]]\nname = \"ops\"\ntoken = \"0123456789abcdef\"\nroles = [\"operate\"]\n\
             [models.m.rollout]\nchampion = \"champion\"\ncanary = { version = \"challenger\", weight = 5 }\n\
             [models.m.rollout.policy]\nrequire_approval = \"promote\"",
            "models.m.rollout.policy.require_approval is set, but no credential has the 'approve' role",
        ),
    ];
    for (text, expected) in cases {
        let err = Config::parse(text).unwrap().validate().unwrap_err();
        assert!(err.contains(expected), "{err:?} should contain {expected:?}");
    }
}

#[test]
fn a_reachable_address_starts_with_both_tokens_or_the_loud_opt_out() {
    let tokens = "admin_token = \"0123456789abcdef\"\nfeedback_token = \"fedcba9876543210\"\n";
    Config::parse(&format!("listen = \"0.0.0.0:8000\"\n{tokens}")).unwrap().validate().unwrap();
    let open = "listen = \"[::]:8000\"\ninsecure_allow_unauthenticated = true\n";
    Config::parse(open).unwrap().validate().unwrap();
    Config::parse("listen = \"[::1]:8000\"\n").unwrap().validate().unwrap();
    let err = Config::parse("admin_token = \"hunter2\"").unwrap().validate().unwrap_err();
    assert!(!err.contains("hunter2"), "the token is never echoed: {err}");
}

#[test]
fn unknown_keys_and_bad_types_are_parse_errors() {
    assert!(Config::parse("lisen = \"x\"").unwrap_err().contains("unknown field `lisen`"));
    assert!(Config::parse("[batching]\nmax_batch = 3").unwrap_err().contains("max_batch"));
    assert!(Config::parse("listen = \"not an address\"").is_err());
    let typo = "[models.m.rollout]\nchampion = \"champion\"\ncanary = { version = \"4\", weight = 5 }\n[models.m.rollout.policy]\nmax_p99_ration = 2.0";
    assert!(Config::parse(typo).unwrap_err().contains("max_p99_ration"), "a typo in the policy is refused");
}

#[test]
fn every_shipped_config_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let tokens = Overrides {
        admin_token: Some("an-admin-token-from-the-env".into()),
        feedback_token: Some("a-feedback-token-from-the-env".into()),
        ..Overrides::default()
    };
    for name in ["serving.toml", "demo.toml", "production.example.toml"] {
        let path = dir.join(name);
        Config::load_with(Some(&path), &tokens).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let production = Config::load_with(Some(&dir.join("production.example.toml")), &Overrides::default());
    assert!(production.unwrap_err().contains("admin_token and feedback_token must be set"));
}

#[test]
fn load_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.toml");
    std::fs::write(&path, "max_body_bytes = 1").unwrap();
    let err = Config::load(&path).unwrap_err().to_string();
    assert!(err.contains("g.toml") && err.contains("max_body_bytes"), "{err}");
    assert!(Config::load(&dir.path().join("missing.toml")).unwrap_err().to_string().contains("missing.toml"));
}

#[test]
fn the_grpc_message_limit_follows_max_body_bytes_unless_set() {
    // A budget below the 64 MiB default body size is a valid config without any gRPC key.
    let c = Config::parse("max_body_bytes = 8388608\n[server]\nmax_in_flight_bytes = 25165824\n").unwrap();
    c.validate().unwrap();
    assert_eq!(c.grpc_message_limit(), 8 << 20);
    let c = Config::parse("grpc_max_message_bytes = 4096\n").unwrap();
    c.validate().unwrap();
    assert_eq!(c.grpc_message_limit(), 4096);
}
