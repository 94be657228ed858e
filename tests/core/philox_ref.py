#!/usr/bin/env python3
"""philox_ref.py: an independent Philox-4x32-10 and sampler_uniform, for test_sampler.c.

Written from Salmon et al., "Parallel random numbers: as easy as 1, 2, 3" (SC 2011), not from
core/sampler.c: the key is bumped before rounds 2..10 here, the C code the same in a loop of
its own. Checks itself against Random123's kat_vectors, then prints the 53-bit values that
test_sampler.c's "a draw matches an independent computation" expects.
    python3 tests/core/philox_ref.py
"""
M = 0xFFFFFFFF


def philox(ctr, key, rounds=10):
    c, k = list(ctr), list(key)
    for r in range(rounds):
        if r:
            k = [(k[0] + 0x9E3779B9) & M, (k[1] + 0xBB67AE85) & M]
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [((p1 >> 32) ^ c[1] ^ k[0]) & M, p1 & M, ((p0 >> 32) ^ c[3] ^ k[1]) & M, p0 & M]
    return c


KAT = [([0, 0, 0, 0], [0, 0], [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]),
       ([M] * 4, [M, M], [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]),
       ([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0],
        [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1])]


def uniform_bits(seed, choice, position, purpose):
    """counter (position, choice, purpose, 0), key (seed low, seed high): the top 53 bits"""
    o = philox([position, choice, purpose, 0], [seed & M, seed >> 32])
    return (o[0] | o[1] << 32) >> 11


if __name__ == "__main__":
    for ctr, key, want in KAT:
        assert philox(ctr, key) == want, (ctr, key)
    for case in [(42, 0, 0, 0), (42, 0, 7, 0), (42, 1, 7, 0), (42, 0, 7, 1), (0x123456789abcdef0, 3, 100000, 0)]:
        print(case, hex(uniform_bits(*case)))
