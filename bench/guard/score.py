"""Scores a guard replay: detection latency per attacker and the benign false-positive rate.

Reads the traffic file (labels) and the decisions written by `distill guard replay --decisions`.
An attacker is one key, or for `hydra` (`hydra-wide`) the group of keys `hydra-R-*`; its latency is the number
of requests it had sent (over all its keys) when the guard first acted on any of them.
Benign keys are scored in two classes: people (label `benign`) and applications at a harvester's
volume (`benign-app`); each is a false positive when the guard acted on it at all, and again
counting only the last day (when every benign key has a day of history).
Usage: score.py TRAFFIC.jsonl DECISIONS.jsonl [--json OUT]
"""

import argparse
import collections
import json


BENIGN = ("benign", "benign-app")


def attacker_of(key, label):
    if label in ("hydra", "hydra-wide"):
        return key.rsplit("-", 1)[0]
    return key


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("traffic")
    ap.add_argument("decisions")
    ap.add_argument("--json")
    args = ap.parse_args()
    label, app = {}, {}
    sent = collections.Counter()  # requests per attacker (or key)
    line_count = {}  # line -> requests its attacker had sent, that line included
    first_t = None
    with open(args.traffic) as f:
        for i, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            r = json.loads(raw)
            first_t = r["t"] if first_t is None else min(first_t, r["t"])
            last_t = r["t"]
            label[r["key"]] = r["label"]
            if "app" in r:
                app[r["key"]] = r["app"]
            a = attacker_of(r["key"], r["label"])
            sent[a] += 1
            line_count[i] = sent[a]
    last_day = last_t - 86400 if last_t - first_t > 86400 else first_t
    first, first_last_day = {}, {}
    with open(args.decisions) as f:
        for raw in f:
            d = json.loads(raw)
            a = attacker_of(d["key_id"], label[d["key_id"]])
            entry = (line_count[d["line"]], d["level"], d["reasons"])
            first.setdefault(a, entry)
            if d["t"] >= last_day:
                first_last_day.setdefault(a, entry)
    out = {"benign": {}, "attackers": {}}
    for cls in BENIGN:
        keys = [k for k, l in label.items() if l == cls]
        acted = [k for k in keys if k in first]
        acted_last = [k for k in keys if k in first_last_day]
        out["benign"][cls] = {
            "keys": len(keys),
            "acted_on": len(acted),
            "false_positive_rate": len(acted) / max(1, len(keys)),
            "acted_on_last_day": len(acted_last),
            "false_positive_rate_last_day": len(acted_last) / max(1, len(keys)),
            "keys_acted_on": {k: {"requests": sent[k], "first": first[k][1], "reasons": first[k][2],
                                  "last_day": k in first_last_day} for k in acted},
        }
        print(f"{cls:<11} keys {len(keys):>5}: acted on {len(acted)} ({100 * len(acted) / max(1, len(keys)):.2f}%), "
              f"on the last day {len(acted_last)} ({100 * len(acted_last) / max(1, len(keys)):.2f}%)")
        kinds = collections.Counter(app[k] for k in keys if k in app)
        if kinds:
            hit = collections.Counter(app[k] for k in acted if k in app)
            out["benign"][cls]["by_kind"] = {kind: {"keys": n, "acted_on": hit[kind]} for kind, n in sorted(kinds.items())}
            print("  by kind: " + ", ".join(f"{kind} {hit[kind]}/{n}" for kind, n in sorted(kinds.items())))
        for k, v in out["benign"][cls]["keys_acted_on"].items():
            when = "last day" if v["last_day"] else "first day"
            kind = f" ({app[k]})" if k in app else ""
            print(f"  {k}{kind}: {v['requests']} requests, {v['first']} ({when}): {'; '.join(v['reasons'])}")
    attackers = sorted({attacker_of(k, l) for k, l in label.items() if l not in BENIGN})
    by_kind = collections.defaultdict(list)
    for a in attackers:
        kind = label.get(a) or label[next(k for k in label if k.startswith(a + "-"))]
        detected = first[a][0] if a in first else None
        out["attackers"][a] = {"kind": kind, "requests": sent[a], "detected_after": detected,
                               "first_action": first[a][1] if a in first else None}
        by_kind[kind].append(detected)
    for kind, lat in sorted(by_kind.items()):
        shown = ", ".join("never" if x is None else str(x) for x in lat)
        print(f"{kind:<18} requests until the first action: {shown}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
