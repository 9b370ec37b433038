"""A classic-BPF interpreter for the few opcodes krate's seccomp filters use, over seccomp_data.

Shared by the tests of krate's own lockdown and of the workload's filter, so both are read
by the same interpreter. Loading any other offset than nr, arch and the six arguments fails.
"""

from __future__ import annotations


def run_bpf(program, nr: int, arch: int, *args: int) -> int:
    """The filter's return value for one system call; unset arguments are 0."""
    data = {0: nr, 4: arch}
    for i in range(6):
        value = args[i] if i < len(args) else 0
        data[16 + 8 * i] = value & 0xFFFFFFFF  # little-endian: the low word first
        data[20 + 8 * i] = value >> 32
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = program[pc]
        if code == 0x20:
            acc = data[k]
        elif code == 0x15:
            pc += jt if acc == k else jf
        elif code == 0x35:
            pc += jt if acc >= k else jf
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")
        pc += 1
