use super::*;

const TOPICS: &[&str] = &[
    "volcanoes",
    "the french revolution",
    "tax law",
    "protein folding",
    "jazz harmony",
    "glaciers",
    "bond markets",
    "roman aqueducts",
    "sourdough baking",
    "black holes",
    "medieval poetry",
    "vaccines",
    "chess openings",
    "plate tectonics",
    "game theory",
    "coral reefs",
    "the printing press",
    "quantum tunnelling",
    "beekeeping",
    "supply chains",
    "opera",
    "desert ecology",
    "cryptography",
    "the silk road",
    "sleep science",
    "urban planning",
    "origami",
    "antibiotics",
    "wind turbines",
    "impressionism",
    "marathon training",
    "compilers",
];

fn throttling() -> GuardConfig {
    GuardConfig { max_action: Level::Throttle, ..GuardConfig::default() }
}

fn text_obs(at: f64, text: &str) -> Observation {
    Observation { at, text: TextFeatures::of_text(text, text), logprobs: None, logit_bias: None, max_tokens: None }
}

fn harvest_prompt(i: usize) -> String {
    let r = text::mix(i as u64) as usize;
    let (t, u) = (TOPICS[r % TOPICS.len()], TOPICS[(r >> 20) % TOPICS.len()]);
    format!("Write a detailed, comprehensive and accurate explanation of {t} and its relation to {u}, for a graduate student.")
}

/// Questions about one subject (a customer's own product), phrased freely.
fn focused_prompt(i: usize) -> String {
    let asks = [
        "Why does my espresso taste sour when the grinder is set to {n}?",
        "Is it normal that the steam wand hisses after {n} minutes?",
        "How often should I descale the espresso machine if I make {n} cups a day?",
        "The portafilter leaks around the gasket on shot {n}, what should I check?",
        "What grind size works for a double shot with {n} grams of coffee?",
        "My milk foam collapses after {n} seconds, am I steaming it wrong?",
        "Can I use bottled water in the machine, the tank holds {n} litres?",
        "Which beans roasted {n} days ago are best for an espresso machine like mine?",
    ];
    asks[i % asks.len()].replace("{n}", &(i * 37 % 90 + 1).to_string())
}

fn run(
    guard: &Guard,
    key: &str,
    start: f64,
    every: f64,
    count: usize,
    prompt: impl Fn(usize) -> Observation,
) -> Vec<(usize, Decision)> {
    let mut decisions = Vec::new();
    for i in 0..count {
        let mut obs = prompt(i);
        obs.at = start + i as f64 * every;
        if let Some(d) = guard.observe(key, &obs) {
            decisions.push((i + 1, d));
        }
    }
    decisions
}

#[test]
fn a_fast_templated_harvester_is_flagged_then_throttled_and_a_focused_heavy_user_is_not() {
    let guard = Guard::new(throttling());
    // One request every 2 s: 1,800 an hour, beyond the 300 floor once 300 are in the hour.
    let decisions = run(&guard, "harvester", 0.0, 2.0, 1500, |i| text_obs(0.0, &harvest_prompt(i)));
    let (at, first) = decisions.first().expect("the harvester is never flagged");
    assert_eq!(first.level, Level::Flag, "{first:?}");
    assert!(*at <= 320, "flagged after {at} requests");
    assert!(first.reasons.iter().any(|r| r.contains("templated")), "{:?}", first.reasons);
    assert!(first.signals.volume >= 1.0);
    let throttle = decisions.iter().find(|(_, d)| d.level == Level::Throttle).expect("never throttled");
    assert!(throttle.0 - at <= 100 + 8, "{} vs {at}", throttle.0);
    // Throttling is as far as this config goes.
    assert!(decisions.iter().all(|(_, d)| d.level <= Level::Throttle));
    assert_eq!(guard.level("harvester"), Level::Throttle);

    let decisions = run(&guard, "espresso-shop", 0.0, 2.0, 1500, |i| text_obs(0.0, &focused_prompt(i)));
    assert!(decisions.is_empty(), "a focused user was flagged: {:?}", decisions[0].1);
    let report = guard.report();
    assert_eq!(report[0].key_id, "harvester");
    assert!(report[0].risk > report[1].risk);
}

#[test]
fn a_slow_harvester_stays_under_the_volume_bar() {
    let guard = Guard::new(GuardConfig::default());
    // 60 an hour: the pattern is there, the volume of a harvest is not.
    assert!(run(&guard, "slow", 0.0, 60.0, 400, |i| text_obs(0.0, &harvest_prompt(i))).is_empty());
    let report = guard.report();
    assert!(report[0].signals.template_share > 0.9, "{:?}", report[0].signals);
}

#[test]
fn a_logprob_sweep_is_flagged_at_the_sweep_threshold_whatever_its_volume() {
    let guard = Guard::new(throttling());
    let decisions = run(&guard, "sweeper", 0.0, 30.0, 200, |i| {
        let mut o = text_obs(0.0, &format!("{} is best described as", TOPICS[i % TOPICS.len()]));
        o.logprobs = Some(20);
        o.max_tokens = Some(1);
        o
    });
    let (at, first) = decisions.first().expect("the sweep is never flagged");
    assert_eq!(*at, GuardConfig::default().sweep_requests);
    assert!(first.reasons[0].contains("sweep"), "{:?}", first.reasons);
    // Twice the threshold throttles.
    assert_eq!(decisions.last().map(|d| d.1.level), Some(Level::Throttle));
}

#[test]
fn an_attacker_spread_over_keys_is_linked_and_judged_by_the_group_volume() {
    let guard = Guard::new(GuardConfig::default());
    // Eight keys, each 240 requests an hour (under the floor of 300), interleaved.
    let mut first = None;
    for i in 0..2000 {
        let key = format!("spread-{}", i % 8);
        let mut obs = text_obs(i as f64 * 1.875, &harvest_prompt(i));
        obs.at = i as f64 * 1.875;
        if let Some(d) = guard.observe(&key, &obs) {
            first.get_or_insert((i + 1, d));
        }
    }
    let (at, d) = first.expect("the spread attacker is never flagged");
    assert!(d.signals.group_keys > 1, "{d:?}");
    assert!(!d.linked.is_empty());
    assert!(d.reasons.iter().any(|r| r.contains("linked keys")), "{:?}", d.reasons);
    assert!(at <= 1500, "flagged after {at} requests");
}

#[test]
fn max_action_caps_the_response_and_off_observes_nothing() {
    // The default only flags.
    let guard = Guard::new(GuardConfig::default());
    let decisions = run(&guard, "h", 0.0, 1.0, 1000, |i| text_obs(0.0, &harvest_prompt(i)));
    assert_eq!(decisions.len(), 1);
    assert_eq!(decisions[0].1.level, Level::Flag);
    let off = Guard::new(GuardConfig { max_action: Level::None, ..GuardConfig::default() });
    assert!(run(&off, "h", 0.0, 1.0, 600, |i| text_obs(0.0, &harvest_prompt(i))).is_empty());
    assert_eq!(off.sync("h", &Standing { level: Level::Throttle, ..Standing::default() }), (Level::None, None));
}

#[test]
fn revoke_needs_escalation_through_throttle_when_allowed() {
    let guard = Guard::new(GuardConfig { max_action: Level::Revoke, ..GuardConfig::default() });
    let decisions = run(&guard, "h", 0.0, 1.0, 1200, |i| text_obs(0.0, &harvest_prompt(i)));
    let levels: Vec<Level> = decisions.iter().map(|d| d.1.level).collect();
    assert_eq!(levels, [Level::Flag, Level::Throttle, Level::Revoke]);
}

#[test]
fn a_clear_from_the_database_resets_the_key_and_a_stored_level_is_adopted() {
    let guard = Guard::new(throttling());
    run(&guard, "h", 0.0, 1.0, 600, |i| text_obs(0.0, &harvest_prompt(i)));
    assert_eq!(guard.level("h"), Level::Throttle);
    let stored = |level, cleared, allowance| Standing { level, cleared, allowance };
    assert_eq!(guard.sync("h", &stored(Level::Throttle, None, None)), (Level::Throttle, None));
    // An admin cleared it in the database at t=600; the volume it accepted is to be stored.
    assert_eq!(guard.sync("h", &stored(Level::None, Some(600), None)), (Level::None, Some(1200.0)));
    assert_eq!(guard.sync("h", &stored(Level::None, Some(600), Some(1200.0))), (Level::None, None));
    assert_eq!(guard.report()[0].signals, Signals::default());
    // The volume it was sending (600 an hour) is now normal for it: the same traffic again
    // is not flagged, twice as much (1,200 an hour plus the 600) is.
    assert!(run(&guard, "h", 600.0, 6.0, 600, |i| text_obs(0.0, &harvest_prompt(i))).is_empty());
    let again = run(&guard, "h", 4200.0, 1.0, 1200, |i| text_obs(0.0, &harvest_prompt(i)));
    assert_eq!(again.first().map(|d| d.1.level), Some(Level::Flag));
    // A level stored by another server is adopted by a fresh one.
    let fresh = Guard::new(throttling());
    assert_eq!(fresh.sync("h", &stored(Level::Throttle, Some(600), Some(1200.0))).0, Level::Throttle);
    // …and so is the stored allowance: 1,000 an hour is not heavy for this key.
    let fresh = Guard::new(throttling());
    fresh.sync("h", &stored(Level::None, Some(600), Some(1200.0)));
    assert!(run(&fresh, "h", 0.0, 3.6, 1000, |i| text_obs(0.0, &harvest_prompt(i))).is_empty());
    assert_eq!(fresh.limits(Level::Throttle, Some(600), None), (Some(6), Some(3000)));
    assert_eq!(fresh.limits(Level::Flag, Some(600), None), (Some(600), None));
}

#[test]
fn config_values_are_checked() {
    assert!(GuardConfig::default().validate().is_ok());
    let bad = GuardConfig { template_share: 1.5, ..GuardConfig::default() };
    assert!(bad.validate().unwrap_err().contains("template_share"));
    let bad = GuardConfig { min_requests: 500, ..GuardConfig::default() };
    assert!(bad.validate().unwrap_err().contains("min_requests"));
    let parsed: GuardConfig = serde_json::from_str(r#"{"max_action": "revoke", "window": 100}"#).unwrap();
    assert_eq!((parsed.max_action, parsed.window, parsed.min_requests), (Level::Revoke, 100, 50));
    assert!(serde_json::from_str::<GuardConfig>(r#"{"windw": 100}"#).is_err());
}

#[test]
fn a_restarted_server_judges_an_old_key_by_the_history_in_the_usage_table() {
    let guard = Guard::new(throttling());
    // Two days ago this key sent 1,500 requests an hour for three hours.
    let day = 86_400.0;
    let hours: Vec<(i64, u64)> = (0..3).map(|h| ((2.0 * day / 3600.0) as i64 + h, 1500)).collect();
    assert!(guard.needs_history("app"));
    guard.seed_history("app", &hours);
    assert!(!guard.needs_history("app"));
    guard.seed_history("app", &hours); // a second load (a race between two requests) adds nothing
    let decisions = run(&guard, "app", 4.0 * day, 2.4, 1500, |i| text_obs(0.0, &harvest_prompt(i)));
    assert!(decisions.is_empty(), "{:?}", decisions[0].1.reasons);
    // The same traffic from a key without history is flagged.
    assert!(!run(&guard, "new", 4.0 * day, 2.4, 1500, |i| text_obs(0.0, &harvest_prompt(i))).is_empty());
}
