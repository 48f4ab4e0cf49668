"""TRL's GOLD trainer on the data of a distill cross-tokenizer bench, and an independent NLL-per-byte figure.

    python3 bench/reference/trl_gold.py train --teacher T.gguf --student S.gguf \
        --train DATA-TRAIN --out DIR [--steps 60 --lr 1e-4 --batch-size 8]
    python3 bench/reference/trl_gold.py nll --student MODEL --heldout DATA-HELDOUT

`train` reads the prompts and the teacher's completions that `distill generate --dataset` stored
(source/prompts.jsonl and the shards' token ids, decoded with the stored teacher tokenizer), so
TRL trains on exactly the texts distill trained on; TRL's teacher then scores them itself (lmbda = 0:
no on-policy samples). Both models are the GGUF files dequantised by transformers, as distill
dequantises the student. The schedule is distill's: AdamW (weight decay 0.01), 10 warm-up steps,
cosine to 0.1 of the peak, gradient norm clipped at 1.

`nll` is the held-out figure of the bench computed outside distill: the student renders each prompt
with its own chat template, the teacher's completion text is tokenised by the student, and the
summed negative log-likelihood of those tokens is divided by the text's bytes. Run on a distill run's
`final/` it must agree with the trainer's `eval_nll_per_byte`.
"""

import argparse
import json
import math
import os
import sys

import pyarrow.parquet as pq
import torch
from tokenizers import Tokenizer


def load_texts(dataset):
    """(messages, completion text) per stored sequence of a distill dataset."""
    prompts = [json.loads(line) for line in open(os.path.join(dataset, "source", "prompts.jsonl"))]
    render = json.load(open(os.path.join(dataset, "source", "render.json")))
    teacher = Tokenizer.from_file(os.path.join(dataset, "source", "tokenizer.json"))
    specials = {i for i, t in teacher.get_added_tokens_decoder().items() if t.special}
    out = []
    shards = sorted(f for f in os.listdir(dataset) if f.endswith(".parquet"))
    for shard in shards:
        table = pq.read_table(os.path.join(dataset, shard), columns=["prompt_index", "prompt_len", "token_ids"])
        for index, plen, ids in zip(*(table.column(c).to_pylist() for c in ["prompt_index", "prompt_len", "token_ids"])):
            completion = ids[plen:]
            if completion and completion[-1] in specials:
                completion = completion[:-1]
            text = teacher.decode(completion, skip_special_tokens=False).rstrip("\ufffd")
            record = prompts[index]
            if "messages" in record:
                messages = list(record["messages"])
            else:
                messages = [{"role": "user", "content": record["prompt"]}]
            if render.get("system"):
                messages = [{"role": "system", "content": render["system"]}] + messages
            out.append((messages, text))
    return out


def load_model(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if path.endswith(".gguf"):
        d, f = os.path.split(path)
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
        # The dequantised weights as an ordinary model (transformers marks a GGUF-loaded one as
        # quantised and will not train it).
        config = model.config
        for key in ["quantization_config", "_pre_quantization_dtype"]:
            if hasattr(config, key):
                delattr(config, key)
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(model.state_dict())
        model = plain
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(path)
    return model, tok


@torch.no_grad()
def nll_per_byte(model, tok, texts):
    model.eval()
    nll, nbytes = 0.0, 0
    for messages, text in texts:
        prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        p = tok(prompt, add_special_tokens=True)["input_ids"]
        c = tok(text, add_special_tokens=False)["input_ids"]
        if not c:
            continue
        ids = torch.tensor([p + c])
        logits = model(ids).logits[0, len(p) - 1 : -1].double()
        lp = torch.log_softmax(logits, -1).gather(1, torch.tensor(c).unsqueeze(1))
        nll -= lp.sum().item()
        nbytes += len(text.encode())
    return nll / nbytes


def cmd_nll(args):
    model, tok = load_model(args.student)
    texts = load_texts(args.heldout)
    print(json.dumps({"model": args.student, "nll_per_byte": nll_per_byte(model, tok, texts), "sequences": len(texts)}))


def cmd_train(args):
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from datasets import Dataset
    from trl.experimental.gold import GOLDConfig, GOLDTrainer

    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    teacher, teacher_tok = load_model(args.teacher)
    teacher_tok_dir = os.path.join(args.out, "teacher-tokenizer")
    teacher_tok.save_pretrained(teacher_tok_dir)
    student, student_tok = load_model(args.student)
    if student_tok.pad_token is None:
        student_tok.pad_token = student_tok.eos_token
    if teacher_tok.pad_token is None:
        teacher_tok.pad_token = teacher_tok.eos_token
    rows = [{"messages": m + [{"role": "assistant", "content": t}]} for m, t in load_texts(args.train)]
    config = GOLDConfig(
        output_dir=os.path.join(args.out, "trainer"),
        per_device_train_batch_size=args.batch_size,
        max_steps=args.steps,
        learning_rate=args.lr,
        weight_decay=0.01,
        warmup_steps=10,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1},
        max_grad_norm=1.0,
        max_length=args.seq_len,
        max_completion_length=args.seq_len // 2,
        gradient_checkpointing=False,
        lmbda=0.0,
        seq_kd=False,
        use_uld_loss=True,
        use_extended_uld=True,
        uld_use_hybrid_loss=True,
        uld_hybrid_matched_weight=1.0,
        uld_hybrid_unmatched_weight=1.0,
        uld_crossentropy_weight=1.0,
        uld_distillation_weight=1.0,
        teacher_tokenizer_name_or_path=teacher_tok_dir,
        logging_steps=5,
        save_strategy="no",
        report_to=[],
        seed=args.seed,
        use_cpu=True,
        bf16=False,
        dataloader_num_workers=0,
    )
    trainer = GOLDTrainer(
        model=student,
        teacher_model=teacher,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=student_tok,
    )
    trainer.train()
    final = os.path.join(args.out, "final")
    trainer.model.save_pretrained(final)
    student_tok.save_pretrained(final)
    with open(os.path.join(args.out, "log.jsonl"), "w") as f:
        for entry in trainer.state.log_history:
            f.write(json.dumps(entry) + "\n")
    print(final)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--teacher", required=True)
    t.add_argument("--student", required=True)
    t.add_argument("--train", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--steps", type=int, default=60)
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--seq-len", type=int, default=128)
    t.add_argument("--seed", type=int, default=0)
    n = sub.add_parser("nll")
    n.add_argument("--student", required=True)
    n.add_argument("--heldout", required=True)
    args = ap.parse_args()
    {"train": cmd_train, "nll": cmd_nll}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
