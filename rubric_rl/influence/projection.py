"""Random Rademacher projection of P-dimensional gradient features to d dimensions, under a memory cap.

The projection is the P x d matrix R with entries +-1/sqrt(d) (so E[<Rx, Ry>] = <x, y>). It is defined
tile by tile: rows ``[k*TILE, (k+1)*TILE)`` are the sign bits drawn by a CPU ``torch.Generator`` seeded
from ``(seed, k)``. Hence the same seed gives the same projection on any device, whatever the chunking,
the memory cap or the dtype, and any row range can be regenerated on its own.

What is kept resident is chosen once, from the ``memory_mb`` cap (everything the projector holds, resident
part and working block together, stays under it):

- ``dense``: the float P x d matrix fits the cap -> built once, kept on the device (fastest);
- ``int8``: its signs as int8 (P x d bytes) fit half the cap -> kept; float blocks are made by a plain
  dtype conversion into a reused buffer (a small fraction of the matmul's cost);
- ``packed``: its sign bits (P x d / 8 bytes) fit half the cap -> kept; blocks are unpacked with a
  byte -> 8-signs lookup table (costs about as much as multiplying the block by ~30-50 rows on CPU);
- ``regen``: otherwise blocks are regenerated from the seed at every call, then unpacked as above.

In the non-dense modes, project many rows per call: the scorer buffers directions across batches and
checkpoints before projecting.
"""

from __future__ import annotations

import math

import torch

from ..configs.influence import PROJECTION_TILE_ROWS as TILE

_MASK64 = (1 << 64) - 1


def _tile_seed(seed: int, k: int) -> int:
    # splitmix64-style mixing, so that neighbouring (seed, k) pairs give unrelated streams
    z = (seed * 0x9E3779B97F4A7C15 + (k + 1) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


class RademacherProjector:
    """``project(x, offset)`` = ``x @ R[offset : offset + x.shape[1]]`` for a virtual P x d Rademacher matrix R."""

    def __init__(self, num_params: int, dim: int, seed: int = 0, memory_mb: float = 1024,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, mode: str | None = None):
        """``mode`` None picks the fastest mode that fits ``memory_mb``; a given mode must fit it too
        (``regen`` always does). The matrix is the same in every mode."""
        if dim <= 0:
            raise ValueError(f"projection dim must be > 0, got {dim}")
        self.num_params, self.dim, self.seed = int(num_params), int(dim), int(seed)
        self.device, self.dtype = torch.device(device), dtype
        self.scale = 1.0 / math.sqrt(self.dim)
        self.packed_cols = (self.dim + 7) // 8
        cap = float(memory_mb) * 2**20
        elem = torch.empty((), dtype=dtype).element_size()
        row_float = self.dim * elem
        p, d = self.num_params, self.dim
        # A working float block of B bytes also needs ~B/2 of temporaries (gather index, int8 signs).
        fits = {"dense": (p * row_float <= cap, cap), "int8": (p * d <= cap / 2, (cap - p * d) / 1.5),
                "packed": (p * self.packed_cols <= cap / 2, (cap - p * self.packed_cols) / 1.5),
                "regen": (True, cap / 1.5)}
        if mode is None:
            mode = next(m for m, (ok, _) in fits.items() if ok)
        elif mode not in fits:
            raise ValueError(f"projection mode must be one of {tuple(fits)}, got {mode!r}")
        elif not fits[mode][0]:
            raise ValueError(f"projection mode {mode!r} does not fit memory_mb={memory_mb} "
                             f"(P={p}, d={d})")
        self.mode, block_cap = mode, fits[mode][1]
        self.block_rows = min(p, int(block_cap // row_float)) if self.mode != "dense" else p
        if self.block_rows < 1:
            raise ValueError(f"memory_mb={memory_mb} cannot hold one projection row of dim {dim}")
        # byte value -> its 8 signs (bit j of byte c is column 8c + j; bit 0 -> +1, bit 1 -> -1), as one int64
        bits = (torch.arange(256).unsqueeze(-1) >> torch.arange(8)) & 1
        self._lut = (1 - 2 * bits).to(torch.int8).contiguous().view(torch.int64).reshape(256).to(self.device)
        # the same table as floats: unpacks bits straight into a float block, no int8 intermediate
        self._flut = (1 - 2 * bits).to(dtype).contiguous().to(self.device)
        self._dense = self._int8 = self._packed = None
        self._block: torch.Tensor | None = None
        if self.mode == "dense":
            self._dense = self._signs(0, p).to(dtype).mul_(self.scale)
        elif self.mode == "int8":
            self._int8 = self._signs(0, p)
        elif self.mode == "packed":
            self._packed = torch.cat([self._tile_bits(k) for k in range(self._num_tiles())])[:p].to(self.device)

    # -- generation -------------------------------------------------------------------------------
    def _num_tiles(self) -> int:
        return (self.num_params + TILE - 1) // TILE

    def _tile_bits(self, k: int) -> torch.Tensor:
        """Sign bits of rows [k*TILE, (k+1)*TILE), packed 8 per byte, on CPU."""
        gen = torch.Generator(device="cpu")
        gen.manual_seed(_tile_seed(self.seed, k))
        return torch.randint(0, 256, (TILE, self.packed_cols), generator=gen, dtype=torch.uint8)

    def _bits(self, a: int, b: int) -> torch.Tensor:
        """Packed sign bits of rows [a, b) (CPU for regenerated rows, device if resident)."""
        if self._packed is not None:
            return self._packed[a:b]
        parts = []
        for k in range(a // TILE, (b - 1) // TILE + 1):
            lo, hi = max(a, k * TILE) - k * TILE, min(b, (k + 1) * TILE) - k * TILE
            parts.append(self._tile_bits(k)[lo:hi])
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def _signs(self, a: int, b: int) -> torch.Tensor:
        """int8 signs (+1/-1) of rows [a, b) on the device."""
        if self._int8 is not None:
            return self._int8[a:b]
        bits = self._bits(a, b).to(self.device)
        words = self._lut.index_select(0, bits.reshape(-1).int())  # 8 signs per byte, as int64
        signs = words.view(torch.int8).reshape(b - a, self.packed_cols * 8)
        return signs if self.packed_cols * 8 == self.dim else signs[:, : self.dim]

    def _unit_block(self, a: int, b: int) -> torch.Tensor:
        """Float +-1 rows [a, b) (unscaled), in a reused buffer."""
        if self._block is None:
            self._block = torch.empty(self.block_rows, self.dim, dtype=self.dtype, device=self.device)
        block = self._block[: b - a]
        if self._int8 is None and self.dim % 8 == 0:  # packed bits -> floats in one gather (~1.7x faster)
            bits = self._bits(a, b).to(self.device)
            torch.index_select(self._flut, 0, bits.reshape(-1).int(), out=block.view(-1, 8))
        else:
            block.copy_(self._signs(a, b))
        return block

    def rows(self, a: int, b: int) -> torch.Tensor:
        """The float rows R[a:b] on the device (a view in ``dense`` mode, a new tensor otherwise)."""
        if not 0 <= a <= b <= self.num_params:
            raise IndexError(f"rows [{a}, {b}) outside [0, {self.num_params})")
        if self._dense is not None:
            return self._dense[a:b]
        return self._signs(a, b).to(self.dtype).mul_(self.scale)

    # -- use --------------------------------------------------------------------------------------
    def project(self, x: torch.Tensor, offset: int = 0, out: torch.Tensor | None = None) -> torch.Tensor:
        """``out += x @ R[offset : offset + x.shape[-1]]`` (``out`` created if None); x is [N, p]."""
        n, p = x.shape
        if offset < 0 or offset + p > self.num_params:
            raise IndexError(f"rows [{offset}, {offset + p}) outside [0, {self.num_params})")
        if out is None:
            out = torch.zeros(n, self.dim, dtype=self.dtype, device=self.device)
        x = x.to(self.dtype)
        if self._dense is not None:
            return out.addmm_(x, self._dense[offset:offset + p])
        for i in range(0, p, self.block_rows):
            j = min(p, i + self.block_rows)
            out.addmm_(x[:, i:j], self._unit_block(offset + i, offset + j), alpha=self.scale)
        return out

    def matrix(self) -> torch.Tensor:
        """The whole P x d matrix (for tests and references only: it ignores the memory cap)."""
        if self._dense is not None:
            return self._dense
        return torch.cat([self.rows(a, min(a + TILE, self.num_params)) for a in range(0, self.num_params, TILE)])
