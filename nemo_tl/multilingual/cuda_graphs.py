"""The multilingual model's CUDA-graph policy for NeMo's greedy RNN-T decoders.

NeMo's greedy label-looping decoder runs as CUDA graphs (``decoding.greedy.use_cuda_graph_decoder``).
Its full-graph mode (while loops as conditional nodes) crashes with an illegal memory access as soon
as one process replays the graphs of two decoders in turn (plain NeMo 3.0 too: two EncDecRNNTModels;
``bench/repro_cuda_graphs.py``). A multilingual model holds one decoder per language plus the batched
LID-free one, so it uses NeMo's other graph mode, no_while_loops (graphs for the loop bodies, loops in
Python), unless ``model.cuda_graphs_mode`` says full_graph. NeMo's frame-looping decoder
(``greedy.loop_labels: false``) has only a conditional-node graph, which crashes the same way: it loops
in Python unless full_graph. NeMo's hooks (training off, validation/test on) reach every decoder
through :func:`enable_cuda_graphs` / :func:`disable_cuda_graphs`.
"""

from __future__ import annotations

from collections.abc import Iterable

from nemo.collections.asr.parts.submodules.rnnt_decoding import RNNTDecoding
from nemo.collections.common.parts.optional_cuda_graphs import WithOptionalCudaGraphs

from nemo_tl.compat import avoid_conditional_graphs

__all__ = ["disable_cuda_graphs", "enable_cuda_graphs", "limit_graphs_mode"]


def limit_graphs_mode(decoding: RNNTDecoding, mode: str) -> None:
    """No conditional-node CUDA graphs in ``decoding`` unless ``mode`` is ``full_graph``.

    Label looping: NeMo's full-graph mode becomes no_while_loops. Frame looping: NeMo's graph
    decoder (one conditional-node graph) gives way to its loop without graphs.
    """
    if mode != "full_graph":
        avoid_conditional_graphs(decoding.decoding)


def enable_cuda_graphs(decodings: Iterable[RNNTDecoding], mode: str) -> bool:
    """NeMo's ``maybe_enable_cuda_graphs`` for every decoding, within ``mode``; True if any state changed."""
    changed = False
    for decoding in decodings:
        if isinstance(decoding.decoding, WithOptionalCudaGraphs):
            changed |= decoding.decoding.maybe_enable_cuda_graphs()
            limit_graphs_mode(decoding, mode)
    return changed


def disable_cuda_graphs(decodings: Iterable[RNNTDecoding]) -> bool:
    """NeMo's ``disable_cuda_graphs`` for every decoding; True if any state changed."""
    changed = False
    for decoding in decodings:
        if isinstance(decoding.decoding, WithOptionalCudaGraphs):
            changed |= decoding.decoding.disable_cuda_graphs()
    return changed
