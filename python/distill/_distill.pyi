"""Type stubs of the native module (crates/python). Use the wrappers in `distill` instead."""

from os import PathLike
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

__version__: str

class DistillError(Exception): ...

Array = Tuple[bytes, str, Tuple[int, ...]]

def cli_main(argv: List[str]) -> int: ...
def default_teacher() -> Optional[str]: ...
def build_dataset(
    prompts: str,
    output: str,
    model: Optional[str],
    k: int,
    max_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
    completions: int,
    chat: bool,
    system: Optional[str],
    batch_size: int,
    prompts_per_shard: int,
    layout: Optional[str],
    system_file: Optional[str] = None,
    system_share: float = 0.5,
    progress: Optional[Callable[[int, int], None]] = None,
) -> str: ...
def train(text: str, format: str, on_event: Optional[Callable[[str, str], None]] = None) -> str: ...
def evaluate(
    student: str, prompts: str, teacher: Optional[str], ood_prompts: Optional[str], max_tokens: int, batch_size: int
) -> str: ...
def export(model: str, output: str, ty: Optional[str], name: Optional[str], force: bool) -> str: ...

class Model:
    source: str
    def __init__(self, path: Optional[str] = None) -> None: ...
    def config_json(self) -> str: ...
    def encode(self, text: str) -> List[int]: ...
    def decode(self, ids: List[int]) -> str: ...
    def generate(
        self,
        prompts: List[str],
        max_tokens: int,
        temperature: float,
        top_p: float,
        top_k: int,
        seed: int,
        stop: List[str],
        chat: bool,
        system: Optional[str],
        batch_size: int,
    ) -> str: ...

class Dataset:
    num_shards: int
    def __init__(self, path: str | PathLike[str]) -> None: ...
    def manifest_json(self) -> str: ...
    def read_shard(self, index: int) -> List[Dict[str, Any]]: ...

class Batches(Iterator[Dict[str, Array]]):
    truncated: int
    def __init__(self, dataset: Dataset, seq_len: int, batch_size: int, seed: int, epoch: int) -> None: ...
    def __next__(self) -> Dict[str, Array]: ...
