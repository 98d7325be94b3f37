#!/usr/bin/env python3
"""Counts locked instructions executed in a callgrind profile (--dump-instr=yes
--compress-pos=no --compress-strings=no): disassembles each object with
objdump, finds lock-prefixed ops and xchg with memory, and sums their
execution counts; prints them per function with address and instruction.

Usage: callgrind_locks.py <callgrind.out> [iterations to divide by]
(see benches/cg_gather.rs)."""
import re, subprocess, sys
from collections import defaultdict

path = sys.argv[1]
div = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
costs = defaultdict(int)  # (ob, addr) -> count
fnof = {}
ob = fn = None
skip_next = False
for line in open(path):
    line = line.rstrip('\n')
    if line.startswith('ob='):
        ob = line[3:]; continue
    if line.startswith('fn='):
        fn = line[3:]; continue
    if line.startswith('calls='):
        skip_next = True; continue
    if line.startswith(('cob=', 'cfn=', 'cfi=', 'cfl=', 'fl=', 'fi=', 'fe=')):
        continue
    if line.startswith('0x'):
        if skip_next:
            skip_next = False; continue
        parts = line.split()
        addr = int(parts[0], 16)
        c = int(parts[2]) if len(parts) > 2 else 0
        costs[(ob, addr)] += c
        fnof[(ob, addr)] = fn
    else:
        skip_next = False

locked = {}
for o in set(k[0] for k in costs):
    if not o or o == '???':
        continue
    try:
        out = subprocess.run(['objdump', '-d', '--no-show-raw-insn', o], capture_output=True, text=True).stdout
    except Exception:
        continue
    for l in out.splitlines():
        m = re.match(r'\s*([0-9a-f]+):\s+(.*)', l)
        if not m:
            continue
        ins = m.group(2).strip()
        if ins.startswith('lock') or (ins.startswith('xchg') and '(' in ins):
            locked[(o, int(m.group(1), 16))] = ins
total = 0
rows = []
for k, ins in locked.items():
    c = costs.get(k, 0)
    if c:
        total += c
        rows.append((c, fnof[k], hex(k[1]), ins))
rows.sort(key=lambda r: -r[0])
for c, f, a, ins in rows:
    print(f"{c/div:8.2f}  {a:>10}  {ins:40}  {f[:140]}")
print(f"total locked per iter: {total/div:.2f}; Ir per iter: {sum(costs.values())/div:.1f}")
