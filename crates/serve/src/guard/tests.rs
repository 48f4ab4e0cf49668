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

/// A one-off request for `max_tokens` about `text`.
fn ask(text: &str, max_tokens: usize) -> Observation {
    Observation { max_tokens: Some(max_tokens), ..Observation::of_text(0.0, text) }
}

fn harvest_prompt(i: usize) -> String {
    let r = text::mix(i as u64) as usize;
    let (t, u) = (TOPICS[r % TOPICS.len()], TOPICS[(r >> 20) % TOPICS.len()]);
    format!("Write a detailed, comprehensive and accurate explanation of {t} and its relation to {u}, for a graduate student.")
}

/// The same request worded a different way each time.
fn paraphrased_prompt(i: usize) -> String {
    let verbs = ["Compose", "Draft", "Give me", "Produce", "Put together", "I need", "Prepare", "Create"];
    let forms = ["an in-depth article on", "a thorough essay about", "a deep dive into", "a primer on", "a lecture on"];
    let tails = ["", " Include examples.", " Use headings.", " Be rigorous.", " Aim at beginners."];
    let r = text::mix(i as u64 ^ 0xabc) as usize;
    format!(
        "{} {} {}{}",
        verbs[r % verbs.len()],
        forms[(r >> 8) % forms.len()],
        TOPICS[(r >> 16) % TOPICS.len()],
        tails[(r >> 24) % tails.len()]
    )
}

fn run(
    guard: &Guard,
    key: &str,
    start: f64,
    every: f64,
    count: usize,
    request: impl Fn(usize) -> Observation,
) -> Vec<(usize, Decision)> {
    let mut decisions = Vec::new();
    for i in 0..count {
        let mut obs = request(i);
        obs.at = start + i as f64 * every;
        if let Some(d) = guard.observe(key, &obs) {
            decisions.push((i + 1, d));
        }
    }
    decisions
}

#[test]
fn a_harvester_is_flagged_once_its_tokens_pass_the_floor_and_then_throttled() {
    let guard = Guard::new(throttling());
    // 1,800 requests an hour for 1,024 tokens each: past the 100,000 an hour floor at request 98.
    let decisions = run(&guard, "harvester", 0.0, 2.0, 600, |i| ask(&harvest_prompt(i), 1024));
    let (at, first) = decisions.first().expect("the harvester is never flagged");
    assert_eq!(first.level, Level::Flag, "{first:?}");
    assert!((98..=112).contains(at), "flagged after {at} requests");
    assert!(first.reasons.iter().any(|r| r.contains("one-off requests")), "{:?}", first.reasons);
    assert!(first.signals.volume >= 1.0 && first.signals.breadth >= 0.9, "{:?}", first.signals);
    let throttle = decisions.iter().find(|(_, d)| d.level == Level::Throttle).expect("never throttled");
    assert!(throttle.0 - at <= 100 + 8, "{} vs {at}", throttle.0);
    assert!(decisions.iter().all(|(_, d)| d.level <= Level::Throttle));
    assert_eq!(guard.level("harvester"), Level::Throttle);
    assert_eq!(guard.report()[0].key_id, "harvester");
}

#[test]
fn paraphrasing_does_not_hide_a_harvest_and_a_made_up_history_is_not_a_conversation() {
    let guard = Guard::new(GuardConfig::default());
    let decisions = run(&guard, "paraphraser", 0.0, 2.0, 400, |i| ask(&paraphrased_prompt(i), 1024));
    assert!(decisions.first().is_some_and(|(at, _)| *at <= 112), "{decisions:?}");
    // The same requests, each behind an earlier exchange the key never had.
    let decisions = run(&guard, "fake-history", 0.0, 2.0, 400, |i| {
        let mut o = ask(&paraphrased_prompt(i + 1000), 1024);
        o.text.previous = Some(text::hash_str(&format!("a turn never sent {i}")));
        o
    });
    assert!(decisions.first().is_some_and(|(at, _)| *at <= 112), "{decisions:?}");
}

#[test]
fn conversations_summaries_and_repeated_evaluations_at_the_same_volume_are_not_harvests() {
    let guard = Guard::new(GuardConfig::default());
    // A chat application: every request after the first continues what the key sent before.
    let conversation = run(&guard, "chat-app", 0.0, 2.0, 1500, |i| {
        let mut o = ask(&harvest_prompt(i), 1024);
        if i % 10 != 0 {
            o.text.previous = Some(ask(&harvest_prompt(i - 1), 1024).text.exact);
        }
        o
    });
    assert!(conversation.is_empty(), "{:?}", conversation[0].1.reasons);
    // A summariser: long documents on everything, answers shorter than them.
    let summaries = run(&guard, "summariser", 0.0, 2.0, 1500, |i| {
        let document = (0..40).map(|j| harvest_prompt(i * 40 + j)).collect::<Vec<_>>().join(" ");
        ask(&document, 256)
    });
    assert!(summaries.is_empty(), "{:?}", summaries[0].1.reasons);
    // An evaluation harness sampling each of its problems ten times.
    let eval = run(&guard, "evals", 0.0, 2.0, 1500, |i| ask(&harvest_prompt(i / 10), 1024));
    assert!(eval.is_empty(), "{:?}", eval[0].1.reasons);
    let signals = guard.report().into_iter().find(|r| r.key_id == "evals").unwrap().signals;
    assert!(signals.generative_repeat_share >= 0.85, "{signals:?}");
}

#[test]
fn a_slow_harvester_is_caught_by_its_day_and_a_trickle_is_not() {
    let guard = Guard::new(GuardConfig::default());
    // 30 an hour for 2,048 tokens: 61,440 an hour, under the hour's floor; the day's 400,000
    // are passed at request 196, six and a half hours in.
    let decisions = run(&guard, "slow", 0.0, 120.0, 400, |i| ask(&harvest_prompt(i), 2048));
    let (at, first) = decisions.first().expect("the slow harvester is never flagged");
    assert!((196..=204).contains(at), "flagged after {at}");
    assert!(first.signals.day_tokens >= 400_000 && first.signals.hour_tokens < 100_000, "{:?}", first.signals);
    // Ten an hour for a day and a half stays a person's volume.
    let guard = Guard::new(GuardConfig::default());
    assert!(run(&guard, "trickle", 0.0, 360.0, 360, |i| ask(&harvest_prompt(i), 1024)).is_empty());
}

#[test]
fn probes_below_the_cap_are_caught_and_classifiers_and_evaluations_are_not() {
    let guard = Guard::new(throttling());
    let probe = |k: usize, prompt_words: usize| {
        move |i: usize| {
            let context: Vec<&str> = (0..prompt_words).map(|j| TOPICS[(i + j) % TOPICS.len()]).collect();
            let mut o = ask(&context.join(" "), 1);
            o.logprobs = Some(k);
            o.prompt_tokens = prompt_words * 2;
            o
        }
    };
    // One step below the cap of 20, a request every 30 s.
    let decisions = run(&guard, "sweeper", 0.0, 30.0, 200, probe(19, 5));
    let (at, first) = decisions.first().expect("the sweep is never flagged");
    assert_eq!(*at, GuardConfig::default().probe_requests);
    assert!(first.reasons[0].contains("probe"), "{:?}", first.reasons);
    assert_eq!(decisions.last().map(|d| d.1.level), Some(Level::Throttle), "twice the threshold throttles");
    // A classifier reading five alternatives of a two-token label, and an evaluation reading the
    // twenty after a long few-shot prompt.
    assert!(run(&guard, "classifier", 0.0, 2.0, 1000, probe(5, 20)).is_empty());
    assert!(run(&guard, "mc-eval", 0.0, 2.0, 1000, probe(20, 300)).is_empty());
    // New logit_bias maps on one-token requests probe; the same map (banning a word) does not.
    let biased = |fixed: bool| {
        move |i: usize| Observation { logit_bias: Some(if fixed { 7 } else { i as u64 }), ..probe(0, 5)(i) }
    };
    assert!(!run(&guard, "bias-probe", 0.0, 30.0, 100, biased(false)).is_empty());
    assert!(run(&guard, "banned-word", 0.0, 30.0, 100, biased(true)).is_empty());
}

#[test]
fn scoring_prompts_with_alternatives_is_caught_and_perplexity_is_not() {
    let guard = Guard::new(GuardConfig::default());
    let scored = |k: usize| {
        move |i: usize| Observation { prompt_logprobs: Some(k), prompt_tokens: 300, ..ask(&harvest_prompt(i), 1) }
    };
    // k = 10 reads 9/19 of the alternatives at 300 positions: 142 a request, 5,000 at the 36th.
    let decisions = run(&guard, "teacher-forcing", 0.0, 10.0, 100, scored(10));
    assert_eq!(decisions.first().map(|d| d.0), Some(36), "{decisions:?}");
    assert!(decisions[0].1.reasons[0].contains("prompt_logprobs"));
    assert!(run(&guard, "perplexity", 0.0, 10.0, 2000, scored(1)).is_empty());
}

#[test]
fn keys_on_one_network_with_the_same_settings_are_linked_and_judged_together() {
    let guard = Guard::new(GuardConfig::default());
    let network: std::net::IpAddr = "203.0.113.7".parse().unwrap();
    // Ten keys, each 36 requests an hour for 1,024 tokens (36,864 an hour: under the floor),
    // interleaved: 368,640 an hour together.
    let mut first = None;
    for i in 0..3000 {
        let key = format!("hydra-{}", i % 10);
        let mut obs = ask(&paraphrased_prompt(i), 1024);
        obs.at = i as f64 * 10.0;
        obs.origin = Some(network_of(network));
        obs.shape = 42;
        if let Some(d) = guard.observe(&key, &obs) {
            first.get_or_insert((i + 1, d));
        }
    }
    let (at, d) = first.expect("the keys are never flagged");
    assert!(d.signals.group_keys > 1 && !d.linked.is_empty(), "{d:?}");
    assert!(d.reasons.iter().any(|r| r.contains("linked keys")), "{:?}", d.reasons);
    assert!(at <= 1500, "flagged after {at} requests");
    // Alone, one of them is not heavy.
    let alone = Guard::new(GuardConfig::default());
    assert!(run(&alone, "one", 0.0, 100.0, 300, |i| ask(&paraphrased_prompt(i), 1024)).is_empty());
}

#[test]
fn max_action_caps_the_response_and_off_observes_nothing() {
    let guard = Guard::new(GuardConfig::default());
    let decisions = run(&guard, "h", 0.0, 1.0, 1000, |i| ask(&harvest_prompt(i), 1024));
    assert_eq!(decisions.len(), 1);
    assert_eq!(decisions[0].1.level, Level::Flag);
    let off = Guard::new(GuardConfig { max_action: Level::None, ..GuardConfig::default() });
    assert!(run(&off, "h", 0.0, 1.0, 600, |i| ask(&harvest_prompt(i), 1024)).is_empty());
    assert_eq!(off.sync("h", &Standing { level: Level::Throttle, ..Standing::default() }), (Level::None, None));
}

#[test]
fn revoke_needs_escalation_through_throttle_when_allowed() {
    let guard = Guard::new(GuardConfig { max_action: Level::Revoke, ..GuardConfig::default() });
    let decisions = run(&guard, "h", 0.0, 1.0, 1200, |i| ask(&harvest_prompt(i), 1024));
    let levels: Vec<Level> = decisions.iter().map(|d| d.1.level).collect();
    assert_eq!(levels, [Level::Flag, Level::Throttle, Level::Revoke]);
}

#[test]
fn a_clear_from_the_database_resets_the_key_and_a_stored_level_is_adopted() {
    let guard = Guard::new(throttling());
    run(&guard, "h", 0.0, 1.0, 600, |i| ask(&harvest_prompt(i), 1024));
    assert_eq!(guard.level("h"), Level::Throttle);
    let stored = |level, cleared, allowance| Standing { level, cleared, allowance };
    assert_eq!(guard.sync("h", &stored(Level::Throttle, None, None)), (Level::Throttle, None));
    // An admin cleared it in the database at t=600, when its last hour held 600 requests of
    // 1,024 tokens; twice that is accepted, and to be stored.
    let accepted = 2.0 * 600.0 * 1024.0;
    assert_eq!(guard.sync("h", &stored(Level::None, Some(600), None)), (Level::None, Some(accepted)));
    assert_eq!(guard.sync("h", &stored(Level::None, Some(600), Some(accepted))), (Level::None, None));
    assert_eq!(guard.report()[0].signals, Signals::default());
    // The volume it was sending (600 an hour) is now normal for it; three times as much is not.
    assert!(run(&guard, "h", 600.0, 6.0, 600, |i| ask(&harvest_prompt(i), 1024)).is_empty());
    let again = run(&guard, "h", 4200.0, 1.0, 3000, |i| ask(&harvest_prompt(i), 1024));
    assert_eq!(again.first().map(|d| d.1.level), Some(Level::Flag));
    // A level stored by another server is adopted by a fresh one, and so is the allowance.
    let fresh = Guard::new(throttling());
    assert_eq!(fresh.sync("h", &stored(Level::Throttle, Some(600), Some(accepted))).0, Level::Throttle);
    let fresh = Guard::new(throttling());
    fresh.sync("h", &stored(Level::None, Some(600), Some(accepted)));
    assert!(run(&fresh, "h", 0.0, 3.6, 1000, |i| ask(&harvest_prompt(i), 1024)).is_empty());
    assert_eq!(fresh.limits(Level::Throttle, Some(600), None), (Some(6), Some(3000)));
    assert_eq!(fresh.limits(Level::Flag, Some(600), None), (Some(600), None));
}

#[test]
fn a_declared_key_is_watched_and_never_acted_on() {
    let guard = Guard::new(throttling());
    guard.sync("evals", &Standing { level: Level::None, cleared: Some(1), allowance: Some(DECLARED) });
    let decisions = run(&guard, "evals", 10.0, 1.0, 1000, |i| {
        let mut o = ask(&harvest_prompt(i), 1);
        o.logprobs = Some(20);
        o
    });
    assert!(decisions.is_empty(), "{:?}", decisions[0].1.reasons);
    let report = guard.report();
    assert!(report[0].signals.probes > 100, "{:?}", report[0].signals);
}

#[test]
fn config_values_are_checked() {
    assert!(GuardConfig::default().validate().is_ok());
    let bad = GuardConfig { one_off_share: 1.5, ..GuardConfig::default() };
    assert!(bad.validate().unwrap_err().contains("one_off_share"));
    let bad = GuardConfig { min_requests: 500, ..GuardConfig::default() };
    assert!(bad.validate().unwrap_err().contains("min_requests"));
    let parsed: GuardConfig = serde_json::from_str(r#"{"max_action": "revoke", "window": 100}"#).unwrap();
    assert_eq!((parsed.max_action, parsed.window, parsed.min_requests), (Level::Revoke, 100, 50));
    assert!(serde_json::from_str::<GuardConfig>(r#"{"windw": 100}"#).is_err());
}

#[test]
fn a_restarted_server_judges_an_old_key_by_the_history_in_the_usage_table() {
    let guard = Guard::new(throttling());
    // Two days ago this key had 1,500 answers of 1,024 tokens written an hour for three hours.
    let day = 86_400.0;
    let hours: Vec<(i64, u64, u64)> = (0..3).map(|h| ((2.0 * day / 3600.0) as i64 + h, 1500, 1500 * 1024)).collect();
    assert!(guard.needs_history("app"));
    guard.seed_history("app", &hours);
    assert!(!guard.needs_history("app"));
    guard.seed_history("app", &hours); // a second load (a race between two requests) adds nothing
    let decisions = run(&guard, "app", 4.0 * day, 2.4, 1500, |i| ask(&harvest_prompt(i), 1024));
    assert!(decisions.is_empty(), "{:?}", decisions[0].1.reasons);
    // The same traffic from a key without history is flagged.
    assert!(!run(&guard, "new", 4.0 * day, 2.4, 1500, |i| ask(&harvest_prompt(i), 1024)).is_empty());
}
