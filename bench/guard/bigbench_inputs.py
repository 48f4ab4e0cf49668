"""Extracts the human-written task inputs of BIG-bench from the `bigbench` sdist (PyPI) into one
JSON file {task: [input, ...]}: the benign prompts of the extraction-guard benchmark.

Keeps tasks with at least 20 inputs of 15-1,500 characters (at most 400 per task).
Usage: bigbench_inputs.py bigbench-1.0.0.tar.gz OUT.json
"""

import json
import sys
import tarfile


def main():
    sdist, out = sys.argv[1], sys.argv[2]
    tasks = {}
    with tarfile.open(sdist) as t:
        for member in t:
            if not member.name.endswith("/task.json") or "/benchmark_tasks/" not in member.name:
                continue
            parts = member.name.split("/benchmark_tasks/")[1].split("/")
            name = parts[0]
            if len(parts) > 2 and name in tasks:
                continue  # a subtask of a task already read
            try:
                task = json.load(t.extractfile(member))
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            inputs = [e.get("input") for e in task.get("examples") or [] if isinstance(e.get("input"), str)]
            inputs = [i.strip() for i in inputs if 15 <= len(i.strip()) <= 1500]
            if len(inputs) >= 20:
                tasks.setdefault(name, []).extend(inputs[:400])
    with open(out, "w") as f:
        json.dump(tasks, f)
    print(f"{len(tasks)} tasks, {sum(len(v) for v in tasks.values())} inputs -> {out}")


if __name__ == "__main__":
    main()
