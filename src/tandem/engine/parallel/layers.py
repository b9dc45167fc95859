"""The layers a tensor-parallel rewrite puts in place of a model's own.

A column-parallel projection needs no layer of its own: it is an `nn.Linear` with fewer output
features (its rows of the weight), and its output stays split. These are the layers that
communicate; each calls the group's collective object, never `torch.distributed` directly.
Parameter names stay those of the module they replace (`weight`, `bias`), so checkpoints load
by the same names. The model calls them through `ops.linear`, which runs their own forward (it
takes its fast kernel path only for plain Linear layers); their local products use that path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tandem.engine import ops
from tandem.engine.parallel.group import AllGather, AllReduce
from tandem.engine.parallel.sharding import Block
from tandem.engine.quant.linear import QuantizedEmbedding, QuantizedLinear


class RowParallelLinear(nn.Module):
    """y = x W^T + b where x and W are split along the input features: each rank multiplies its
    block, one all-reduce sums the partial products, and the bias (held whole) is added once.

    With `sum_in_norm` (no bias only) the output is this rank's partial product, unsummed: the
    model passes it to the next norm through `unsummed(layer)`, which sums and normalizes in one
    step (`AllReduce.add_rms_norm`)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        all_reduce: AllReduce,
        dtype: torch.dtype | None = None,
        sum_in_norm: bool = False,
    ) -> None:
        super().__init__()
        if sum_in_norm and bias:
            raise ValueError("a row-parallel layer with a bias sums its output itself")
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype)) if bias else None
        self.all_reduce = all_reduce
        self.sum_in_norm = sum_in_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        partial = ops.matmul(x, self.weight)  # [..., out_features], this rank's share of the sum
        if self.sum_in_norm:
            return partial
        total = self.all_reduce(partial)
        return total if self.bias is None else total + self.bias


class QuantizedRowParallelLinear(QuantizedLinear):
    """A RowParallelLinear whose block of the weight is quantized (the block's inputs start on a
    group of the quantization, `QuantizedWeight.columns`); sums like RowParallelLinear."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        all_reduce: AllReduce,
        sum_in_norm: bool = False,
    ) -> None:
        super().__init__(in_features, out_features, bias)
        if sum_in_norm and bias:
            raise ValueError("a row-parallel layer with a bias sums its output itself")
        self.all_reduce = all_reduce
        self.sum_in_norm = sum_in_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        partial = self.product(x)  # [..., out_features], this rank's share of the sum
        if self.sum_in_norm:
            return partial
        total = self.all_reduce(partial)
        return total if self.bias is None else total + self.bias


def unsummed(layer: nn.Module) -> AllReduce | None:
    """The all-reduce still owed to `layer`'s output (None: the output is whole)."""
    if isinstance(layer, RowParallelLinear | QuantizedRowParallelLinear) and layer.sum_in_norm:
        return layer.all_reduce
    return None


class VocabParallelEmbedding(nn.Module):
    """An embedding whose rows (token ids `vocab`) are split over the ranks: each rank looks up
    the ids it holds, zeros for the others, and an all-reduce assembles every token's row."""

    def __init__(
        self, vocab: Block, embedding_dim: int, all_reduce: AllReduce, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        self.vocab = vocab
        self.weight = nn.Parameter(torch.empty(vocab.size, embedding_dim, dtype=dtype))
        self.all_reduce = all_reduce

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        held = (token_ids >= self.vocab.start) & (token_ids < self.vocab.end)  # [B, T]
        local_ids = torch.where(held, token_ids - self.vocab.start, 0)
        rows = F.embedding(local_ids, self.weight) * held.unsqueeze(-1).to(
            self.weight.dtype
        )  # [B, T, hidden]
        return self.all_reduce(rows)


class VocabParallelHead(nn.Module):
    """The output projection split by vocabulary rows: each rank computes the logits of its
    block, and an all-gather assembles full logits on every rank (the sampling rank uses them)."""

    def __init__(
        self,
        hidden_size: int,
        vocab: Block,
        vocab_sizes: tuple[int, ...],
        all_gather: AllGather,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.vocab = vocab
        self.vocab_sizes = vocab_sizes  # every rank's block size, in rank order
        self.weight = nn.Parameter(torch.empty(vocab.size, hidden_size, dtype=dtype))
        self.all_gather = all_gather

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = ops.matmul(x, self.weight)  # [R, vocab block]
        return self.all_gather(local, self.vocab_sizes)  # [R, vocab]


class QuantizedVocabParallelEmbedding(QuantizedEmbedding):
    """VocabParallelEmbedding over int8 rows (`--quantize`): this rank's rows of the table."""

    def __init__(self, vocab: Block, embedding_dim: int, all_reduce: AllReduce, dtype: torch.dtype) -> None:
        super().__init__(vocab.size, embedding_dim, dtype)
        self.vocab = vocab
        self.all_reduce = all_reduce

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        held = (token_ids >= self.vocab.start) & (token_ids < self.vocab.end)  # [B, T]
        local_ids = torch.where(held, token_ids - self.vocab.start, 0)
        rows = super().forward(local_ids) * held.unsqueeze(-1).to(self.dtype)  # [B, T, hidden]
        return self.all_reduce(rows)


class QuantizedVocabParallelHead(QuantizedLinear):
    """VocabParallelHead with quantized rows: this rank's logits, then the all-gather."""

    def __init__(
        self, hidden_size: int, vocab: Block, vocab_sizes: tuple[int, ...], all_gather: AllGather
    ) -> None:
        super().__init__(hidden_size, vocab.size, bias=False)
        self.vocab = vocab
        self.vocab_sizes = vocab_sizes
        self.all_gather = all_gather

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.all_gather(self.product(x), self.vocab_sizes)  # [R, vocab]
