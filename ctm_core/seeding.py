"""Seeds to generators: every seed in [0, MAX_SEED] selects its own random stream.

PyTorch's CPU generator (the Mersenne Twister MT19937) keeps only the low 32 bits of
`manual_seed`, so seeds 2³² apart would draw the same numbers. `seeded_generator` seeds a seed
below 2³² exactly as `manual_seed` does (every output recorded with such a seed stays the same)
and fills the twister's 624-word state from NumPy's `SeedSequence`, which mixes every bit of the
seed, for a larger one.
"""

import numpy as np
import torch

from ctm_core.config import MAX_SEED

_WORDS = 624  # MT19937's state
# torch's CPU generator state (CPUGeneratorImplState): the initial seed (8 bytes), `left` (4),
# `seeded` (4), `next` (8), then the 624 state words, 8 bytes each, then the normal-sample caches.
_WORDS_OFFSET = 24
_STATE_BYTES = 5056


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator whose stream is a function of all of `seed`'s bits (0 ≤ seed ≤ MAX_SEED)."""
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be in [0, {MAX_SEED}], got {seed}")
    generator = torch.Generator().manual_seed(seed & 0xFFFF_FFFF)
    if seed < 2**32:
        return generator
    state = generator.get_state().numpy().copy()
    if state.size != _STATE_BYTES:  # a PyTorch whose generator state is laid out otherwise
        raise RuntimeError(
            f"unexpected torch generator state of {state.size} bytes; seeds ≥ 2³² need {_STATE_BYTES}"
        )
    words = np.random.SeedSequence(seed).generate_state(_WORDS, np.uint32).astype("<u8")
    state[_WORDS_OFFSET : _WORDS_OFFSET + 8 * _WORDS] = words.view(np.uint8)
    generator.set_state(torch.from_numpy(state))
    return generator
