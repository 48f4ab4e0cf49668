//! The server database through the same code on SQLite (always) and Postgres (when
//! `DISTILL_TEST_POSTGRES_URL` names a database to use, as `scripts/test.sh` sets it up
//! when a local Postgres is installed).

use std::collections::BTreeMap;

use distill_serve::guard::{Decision, Level, Signals};
use distill_serve::{Db, StoredCompletion};

async fn exercise(db: &Db) {
    let (key, secret) = db.create_key("alice", false, Some(60), None).await.unwrap();
    assert!(secret.starts_with("dk-") && secret.len() > 30);
    assert!(db.create_key(" ", false, None, None).await.is_err(), "a key needs a name");
    let found = db.find_key(&secret).await.unwrap().expect("the secret finds its key");
    assert_eq!(found, key);
    assert_eq!((found.rpm, found.tpm, found.admin), (Some(60), None, false));
    assert!(db.find_key("dk-wrong").await.unwrap().is_none());

    db.record_usage(&key.id, "chat.completions", 20, 7, "ok").await.unwrap();
    db.record_usage(&key.id, "chat.completions", 20, 3, "aborted").await.unwrap();
    let usage = db.usage(0).await.unwrap();
    let mine = usage.iter().find(|u| u.key_id == key.id).unwrap();
    assert_eq!((mine.requests, mine.prompt_tokens, mine.completion_tokens, mine.aborted), (2, 40, 10, 1));

    let metadata: BTreeMap<String, String> = [("team".to_string(), "support ✓".to_string())].into();
    let row = StoredCompletion {
        id: format!("chatcmpl-{}", key.id),
        created: 1_795_910_400,
        key_id: key.id.clone(),
        model: "tiny".into(),
        endpoint: "chat.completions".into(),
        metadata,
        request: "{ \"model\":\"tiny\",\n \"x\": \"\\u00e9 ✓\" }".into(),
        response: "{\"id\": 1}".into(),
        logprobs: "{\"k\": 20, \"choices\": []}".into(),
        prompt_tokens: 20,
        completion_tokens: 7,
    };
    db.store_completion(&row).await.unwrap();
    assert!(db.store_completion(&row).await.is_err(), "ids are unique");
    let stored = db.completions(1_795_910_400).await.unwrap();
    assert!(stored.contains(&row), "the row comes back exactly");
    assert!(!db.completions(1_795_910_401).await.unwrap().contains(&row), "--since filters");

    assert!(db.revoke_key("alice").await.unwrap());
    assert!(db.find_key(&secret).await.unwrap().is_none(), "a revoked key no longer authenticates");
    assert!(!db.revoke_key("alice").await.unwrap(), "nothing left to revoke");
    assert_eq!(db.integrity_check().await.unwrap(), "ok");
    exercise_guard(db).await;
}

/// The extraction guard's state and audit: decisions, a revocation, the report and a clear.
async fn exercise_guard(db: &Db) {
    let (key, secret) = db.create_key("harvester", false, None, None).await.unwrap();
    let decision = |level, previous, at| Decision {
        key_id: key.id.clone(),
        previous,
        level,
        risk: 2.5,
        reasons: vec!["1800 requests in the last hour by the key".into(), "98% templated ✓".into()],
        signals: Signals { window: 200, template_share: 0.98, breadth: 0.95, ..Signals::default() },
        linked: vec!["key_other".into()],
        requests: 640,
        at,
    };
    db.record_guard_decision(&decision(Level::Flag, Level::None, 1_795_910_400.25)).await.unwrap();
    assert_eq!(db.find_key(&secret).await.unwrap().unwrap().guard.level, Level::Flag);
    db.record_guard_decision(&decision(Level::Revoke, Level::Flag, 1_795_910_400.5)).await.unwrap();
    assert!(db.find_key(&secret).await.unwrap().is_none(), "the guard's revocation is applied");

    let report = db.guard_report().await.unwrap();
    let row = report.iter().find(|r| r.key_id == key.id).unwrap();
    assert_eq!((row.level, row.risk, row.revoked, row.name.as_str()), (Level::Revoke, 2.5, true, "harvester"));
    assert_eq!(row.reasons[1], "98% templated ✓");
    assert_eq!(row.signals["signals"]["template_share"], 0.98);
    assert_eq!(row.signals["linked"][0], "key_other");

    assert_eq!(db.clear_guard("harvester", "a partner's crawler").await.unwrap(), Some(key.id.clone()));
    let live = db.find_key(&secret).await.unwrap().expect("a clear brings back a key the guard revoked");
    assert_eq!(live.guard.level, Level::None);
    assert!(live.guard.cleared.is_some());
    db.set_guard_allowance(&key.id, 1234.5).await.unwrap();
    assert_eq!(db.find_key(&secret).await.unwrap().unwrap().guard.allowance, Some(1234.5));
    assert_eq!(db.clear_guard("nobody", "").await.unwrap(), None);

    let audit = db.guard_audit(Some("harvester"), 0).await.unwrap();
    let actions: Vec<(&str, &str)> = audit.iter().map(|a| (a.action.as_str(), a.actor.as_str())).collect();
    assert_eq!(actions, [("flag", "guard"), ("revoke", "guard"), ("clear", "admin")]);
    assert_eq!(audit[0].signals["requests"], 640);
    assert!(audit[2].reasons[0].contains("a partner's crawler"));
    assert!(db.guard_audit(Some(&key.id), i64::MAX).await.unwrap().is_empty());

    // The usage table gives the guard a key's hourly history.
    for _ in 0..3 {
        db.record_usage(&key.id, "chat.completions", 5, 5, "ok").await.unwrap();
    }
    let hours = db.hourly_usage(&key.id, 0).await.unwrap();
    assert_eq!(hours.len(), 1, "{hours:?}");
    assert_eq!((hours[0].1, hours[0].2), (3, 15));
    assert!((hours[0].0 * 3600 - distill_serve::db::now()).abs() <= 3600);
    assert!(db.hourly_usage(&key.id, i64::MAX).await.unwrap().is_empty());
    // A declared use is audited and stored as the key's allowance.
    assert_eq!(db.allow_guard("harvester", "a partner's eval harness", None).await.unwrap(), Some(key.id.clone()));
    let allowed = db.find_key(&secret).await.unwrap().unwrap().guard;
    assert_eq!(allowed.allowance, Some(distill_serve::guard::DECLARED));
    let audit = db.guard_audit(Some("harvester"), 0).await.unwrap();
    assert_eq!((audit.last().unwrap().action.as_str(), audit.last().unwrap().actor.as_str()), ("allow", "admin"));
    assert!(audit.last().unwrap().reasons[0].contains("eval harness"));
    assert_eq!(db.allow_guard("nobody", "x", Some(10.0)).await.unwrap(), None);
}

#[tokio::test]
async fn sqlite_keeps_keys_usage_and_captures() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/serve.db");
    let db = Db::open(path.to_str().unwrap()).await.unwrap();
    exercise(&db).await;
    db.close().await;
    // Reopening keeps everything (and the schema is created only once).
    let db = Db::open(path.to_str().unwrap()).await.unwrap();
    assert_eq!(db.list_keys().await.unwrap().len(), 2);
}

#[tokio::test]
async fn postgres_keeps_keys_usage_and_captures() {
    let Ok(url) = std::env::var("DISTILL_TEST_POSTGRES_URL") else {
        eprintln!("DISTILL_TEST_POSTGRES_URL is not set: the Postgres variant did not run");
        return;
    };
    let db = Db::open(&url).await.unwrap();
    exercise(&db).await;
}
