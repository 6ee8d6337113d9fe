//! The configuration's contract with docs/reference.md: precedence, every error class naming the key
//! once with what is accepted, lists from the environment.
#![allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error

use super::*;
use figment::Jail;

#[test]
fn inbox_prefix_follows_the_identity_of_the_seed() {
    let mut n = Config::default().nats;
    assert_eq!(n.inbox_prefix(), "_INBOX");
    n.nkey = Some("/creds/relay.nk".into());
    assert_eq!(n.inbox_prefix(), "_INBOX_relay");
    n.nkey = Some("/creds/scada-dashboard.nk".into());
    assert_eq!(n.inbox_prefix(), "_INBOX_scada-dashboard");
    n.nkey = Some("/creds/seed.txt".into());
    assert_eq!(n.inbox_prefix(), "_INBOX");
    n.inbox_prefix = Some("_INBOX_ops".into());
    assert_eq!(n.inbox_prefix(), "_INBOX_ops");
    let mut c = Config::default();
    c.nats.inbox_prefix = Some("_INBOX.>".into());
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("nats.inbox_prefix"));
}

#[test]
fn defaults_are_valid() {
    Config::default().validate().unwrap();
}

#[test]
fn precedence_file_then_url_vars_then_prefixed_env() {
    Jail::expect_with(|jail| {
        jail.create_file(
            DEFAULT_FILE,
            r#"
            [database]
            url = "postgresql://file/db"
            [relay]
            batch_size = 10
            poll_interval = "250ms"
            "#,
        )?;
        let c = Config::load(None).unwrap();
        assert_eq!(c.database.url, "postgresql://file/db");
        assert_eq!(c.relay.batch_size, 10);
        assert_eq!(c.relay.poll_interval, Duration::from_millis(250));

        jail.set_env("DATABASE_URL", "postgresql://env/db");
        jail.set_env("NATS_URL", "nats://env:4222");
        let c = Config::load(None).unwrap();
        assert_eq!(c.database.url, "postgresql://env/db");
        assert_eq!(c.nats.url, "nats://env:4222");

        jail.set_env("MES_EVENTS_DATABASE__URL", "postgresql://prefixed/db");
        jail.set_env("MES_EVENTS_RELAY__BATCH_SIZE", "7");
        let c = Config::load(None).unwrap();
        assert_eq!(c.database.url, "postgresql://prefixed/db");
        assert_eq!(c.relay.batch_size, 7);
        Ok(())
    });
}

#[test]
fn unknown_key_names_key_and_file() {
    Jail::expect_with(|jail| {
        jail.create_file("x.toml", "[relay]\nbatch_sise = 3\n")?;
        let err = Config::load(Some(Path::new("x.toml"))).unwrap_err();
        let ConfigError::Invalid(e) = &err else {
            panic!("{err:?}")
        };
        assert!(
            matches!(e.kind, figment::error::Kind::UnknownField(ref f, _) if f == "batch_sise")
        );
        let text = err.to_string();
        assert!(
            text.contains("batch_sise") && text.contains("x.toml"),
            "{text}"
        );
        Ok(())
    });
}

#[test]
fn bad_duration_names_key_and_env_var() {
    Jail::expect_with(|jail| {
        jail.set_env("MES_EVENTS_RELAY__POLL_INTERVAL", "soon");
        let err = Config::load(None).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("poll_interval"), "{text}");
        assert!(text.contains("MES_EVENTS_RELAY__POLL_INTERVAL"), "{text}");
        Ok(())
    });
}

#[test]
fn bad_value_names_key_and_accepted_values() {
    Jail::expect_with(|jail| {
        jail.set_env("MES_EVENTS_EVENTS__SITE", "Basel Site");
        let err = Config::load(None).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Value {
                    key: "events.site",
                    ..
                }
            ),
            "{err:?}"
        );
        Ok(())
    });
}

#[test]
fn bad_enum_value_lists_the_accepted_ones() {
    Jail::expect_with(|jail| {
        jail.set_env("MES_EVENTS_RELAY__ON_INVALID", "ignore");
        let text = Config::load(None).unwrap_err().to_string();
        assert!(
            text.contains("relay.on_invalid") && text.contains("reject") && text.contains("stop"),
            "{text}"
        );
        Ok(())
    });
}

#[test]
fn a_key_is_named_once_with_a_suggestion_and_the_double_underscore_rule() {
    Jail::expect_with(|jail| {
        jail.create_file("x.toml", "[relay]\nbatch_sise = 3\n")?;
        let text = Config::load(Some(Path::new("x.toml")))
            .unwrap_err()
            .to_string();
        assert!(text.contains("key `relay.batch_sise`"), "{text}");
        assert!(!text.contains("batch_sise.batch_sise"), "{text}");
        assert!(text.contains("did you mean `batch_size`?"), "{text}");
        Ok(())
    });
    Jail::expect_with(|jail| {
        jail.set_env("MES_EVENTS_DATABASE_URL", "postgresql://x@h/db");
        let text = Config::load(None).unwrap_err().to_string();
        assert!(text.contains("key `database_url`"), "{text}");
        assert!(!text.contains("database_url.database_url"), "{text}");
        assert!(text.contains("double underscore"), "{text}");
        Ok(())
    });
}

#[test]
fn accepted_values_are_in_user_words() {
    Jail::expect_with(|jail| {
        jail.set_env("MES_EVENTS_RELAY__BATCH_SIZE", "many");
        let text = Config::load(None).unwrap_err().to_string();
        assert!(
            text.contains("relay.batch_size") && text.contains("a whole number"),
            "{text}"
        );
        assert!(!text.contains("usize"), "{text}");
        Ok(())
    });
}

#[test]
fn a_list_from_the_environment_is_comma_separated() {
    Jail::expect_with(|jail| {
        jail.set_env("MES_EVENTS_RELAY__STREAMS", "MES_EVENTS, MES_PV");
        assert_eq!(
            Config::load(None).unwrap().relay.streams,
            ["MES_EVENTS", "MES_PV"]
        );
        jail.set_env("MES_EVENTS_RELAY__STREAMS", "[MES_EVENTS,MES_PV]");
        assert_eq!(
            Config::load(None).unwrap().relay.streams,
            ["MES_EVENTS", "MES_PV"]
        );
        Ok(())
    });
}

#[test]
fn every_bad_value_is_told_at_once() {
    Jail::expect_with(|jail| {
        jail.set_env("MES_EVENTS_EVENTS__SITE", "Basel Site");
        jail.set_env("MES_EVENTS_RELAY__BATCH_SIZE", "0");
        jail.set_env("DATABASE_URL", "not a url");
        let text = Config::load(None).unwrap_err().to_string();
        for key in ["events.site", "relay.batch_size", "database.url"] {
            assert_eq!(
                text.matches(&format!("`{key}`")).count(),
                1,
                "{key} once in {text}"
            );
        }
        Ok(())
    });
}

#[test]
fn explicit_missing_file_is_an_error() {
    let err = Config::load(Some(Path::new("/nonexistent/mes.toml"))).unwrap_err();
    assert!(matches!(err, ConfigError::MissingFile { .. }));
}

#[test]
fn an_empty_value_unsets_an_optional_setting() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "mes-events.toml",
            "[http]\naddress = \"127.0.0.1:9464\"\n[nats]\nnkey = \"relay.nk\"\n[relay]\ndurability_horizon = \"6s\"\n",
        )?;
        let cfg = Config::load(None).unwrap();
        assert_eq!(cfg.http.address.as_deref(), Some("127.0.0.1:9464"));
        assert_eq!(cfg.relay.durability_horizon, Some(Duration::from_secs(6)));
        jail.set_env("MES_EVENTS_HTTP__ADDRESS", "");
        jail.set_env("MES_EVENTS_NATS__NKEY", "");
        jail.set_env("MES_EVENTS_RELAY__DURABILITY_HORIZON", "");
        let cfg = Config::load(None).unwrap();
        assert_eq!(
            cfg.http.address, None,
            "a second process from the same file serves nothing"
        );
        assert_eq!(cfg.nats.nkey, None);
        assert_eq!(cfg.relay.durability_horizon, None);
        jail.set_env("MES_EVENTS_RELAY__DURABILITY_HORIZON", "6 parsecs");
        let text = Config::load(None).unwrap_err().to_string();
        assert!(text.contains("relay.durability_horizon"), "{text}");
        Ok(())
    });
}

#[test]
fn database_tls_keys_join_the_connection_string_and_must_agree_with_it() {
    Jail::expect_with(|jail| {
        jail.create_file("ca.pem", "not read here")?;
        jail.create_file(
            DEFAULT_FILE,
            r#"
            [database]
            url = "postgresql://relay@db.plant/mes?application_name=x"
            sslmode = "verify-full"
            sslrootcert = "ca.pem"
            "#,
        )?;
        let c = Config::load(None).unwrap();
        assert_eq!(
            c.database.url,
            "postgresql://relay@db.plant/mes?application_name=x&sslmode=verify-full&sslrootcert=ca.pem"
        );
        // The key=value form, a key from the environment.
        jail.set_env("MES_EVENTS_DATABASE__URL", "host=db.plant dbname=mes");
        jail.set_env("MES_EVENTS_DATABASE__SSLCERT", "/etc/mes/relay crt.pem");
        jail.set_env("MES_EVENTS_DATABASE__SSLKEY", "/etc/mes/relay.key");
        let c = Config::load(None).unwrap();
        assert_eq!(
            c.database.url,
            "host=db.plant dbname=mes sslmode='verify-full' sslrootcert='ca.pem' sslcert='/etc/mes/relay crt.pem' sslkey='/etc/mes/relay.key'"
        );
        // Twice, differently: refused, naming both.
        jail.set_env("MES_EVENTS_DATABASE__URL", "host=db.plant sslmode=require");
        let e = Config::load(None).unwrap_err().to_string();
        assert!(
            e.contains("sslmode") && e.contains("set it in one place"),
            "{e}"
        );
        // A mode libpq does not know.
        jail.set_env("MES_EVENTS_DATABASE__URL", "host=db.plant");
        jail.set_env("MES_EVENTS_DATABASE__SSLMODE", "verify");
        let e = Config::load(None).unwrap_err().to_string();
        assert!(e.contains("verify-full"), "{e}");
        Ok(())
    });
}
