"""Turns the teacher's synthesised function stubs into the code example's prompt files.

    python3 examples/code/make_prompts.py SYNTHESIZED.jsonl HumanEval.jsonl.gz

`distill generate --synthesize` keeps whatever the teacher wrote under each header; a coder model
often goes on past the docstring into a body. This keeps each candidate's first function up to
the end of its docstring, where that is valid Python with a `pass` body, and drops it if its name
or its docstring is close to a HumanEval problem's (the evaluation must not be trained on). The
first HELDOUT stubs go to heldout.jsonl, the rest to train.jsonl, beside this script."""
import argparse
import ast
import difflib
import gzip
import json
import re
from pathlib import Path


def stub_of(text: str):
    """The first top-level function of text, cut after its docstring, or None."""
    match = re.search(r"^def \w+\(.*?\).*?:\n", text, re.M | re.S)
    if not match:
        return None
    head = text[: match.start()]
    imports = [l for l in head.splitlines() if re.match(r"(from \S+ )?import ", l)]
    rest = text[match.end():] + "\n"
    doc = re.match(r'(\s+)("""|\'\'\')(.*?)\2[ \t]*\n', rest, re.S)
    if not doc or len(doc.group(3).strip()) < 20:
        return None
    stub = "\n".join(imports + [""] if imports else []) + match.group(0) + rest[: doc.end()]
    try:
        tree = ast.parse(stub + doc.group(1).split("\n")[-1] + "pass\n")
    except SyntaxError:
        return None
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    return (stub, funcs[0].name, ast.get_docstring(funcs[0])) if len(funcs) == 1 else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("synthesized")
    ap.add_argument("humaneval")
    ap.add_argument("--heldout", type=int, default=40)
    ap.add_argument("--max-similarity", type=float, default=0.6)
    args = ap.parse_args()
    problems = [json.loads(l) for l in gzip.open(args.humaneval, "rt")]
    names = {p["entry_point"] for p in problems}
    docs = [ast.get_docstring(next(n for n in ast.parse(p["prompt"]).body if isinstance(n, ast.FunctionDef) and n.name == p["entry_point"])) or "" for p in problems]
    seen, kept, dropped = set(), [], {"no stub": 0, "HumanEval": 0, "repeat": 0}
    for line in open(args.synthesized):
        parsed = stub_of(json.loads(line)["prompt"])
        if parsed is None:
            dropped["no stub"] += 1
            continue
        stub, name, doc = parsed
        if name in seen:
            dropped["repeat"] += 1
            continue
        if name in names or any(difflib.SequenceMatcher(None, doc, d).quick_ratio() >= args.max_similarity
                                and difflib.SequenceMatcher(None, doc, d).ratio() >= args.max_similarity for d in docs):
            dropped["HumanEval"] += 1
            continue
        seen.add(name)
        kept.append(stub)
    here = Path(__file__).parent
    for path, part in [(here / "heldout.jsonl", kept[: args.heldout]), (here / "train.jsonl", kept[args.heldout:])]:
        with open(path, "w") as f:
            for i, stub in enumerate(part):
                f.write(json.dumps({"prompt": stub, "metadata": {"id": f"{path.stem}-{i:04}"}}) + "\n")
    print(f"kept {len(kept)} ({args.heldout} held out); dropped {dropped}")


if __name__ == "__main__":
    main()
