"""Which store holds a model's embeddings for a task: an existing store, or one filled on demand."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mvh.store import EmbeddingStore


@dataclass
class StoreSpec:
    """An existing store (`uri` only), or a registered `model` whose store at `uri` is created/reused.

    `label` names the model in result tables (default: the model name).
    """

    uri: str
    model: str | None = None
    weights: str | None = None
    random_init: bool = False
    label: str | None = None


def open_spec(
    spec: StoreSpec, device: str = "auto", mpp: float = 0.5, tile_px: int = 224
) -> tuple[str, EmbeddingStore, Callable[[], Any]]:
    """(label, store, embedder factory) for `spec`; the factory builds the store's exact backbone.

    A `model` spec opens or creates its store with the fingerprint of that model and weights at
    `mpp`/`tile_px` (FingerprintMismatchError when the store holds another model or weights).
    """
    from mvh.extractor.embedder import Embedder

    if spec.model is not None:
        embedder = Embedder(spec.model, spec.weights, spec.random_init, device=device)
        store = EmbeddingStore.open_or_create(spec.uri, embedder.fingerprint(mpp=mpp, tile_px=tile_px))
        return spec.label or spec.model, store, lambda: embedder
    store = EmbeddingStore.open(spec.uri)

    def factory() -> Any:
        return Embedder.from_fingerprint(store.fingerprint, spec.weights, device=device)

    return spec.label or store.fingerprint.model, store, factory
