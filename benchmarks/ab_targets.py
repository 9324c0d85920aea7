#!/usr/bin/env python3
r"""Judges ab_bench --json runs against issue 5's targets.

Usage: benchmarks/ab_targets.py RUN.json [RUN.json ...]

Each run must hold unary rows for shm-notify, uds and inproc at 64 B, 4 KiB,
64 KiB, 1 MiB and 4 MiB (concurrency 1) and at 4 KiB with 8 and 64 callers,
e.g. from

  ab_bench --transports=shm-notify,uds,inproc --shapes=unary \
      --sizes=64,4096,65536,1048576,4194304 --concurrency=1,8,64 \
      --rounds=3 --json=runN.json

Every ratio is taken inside one run (the transports were interleaved); a
target counts as met when its median over the runs meets it. Prints one
line per target with each run's value, the median and the verdict.
"""
import json
import statistics
import sys

SIZES = (64, 4096, 65536, 1048576, 4194304)
SIZE_NAMES = {64: '64 B', 4096: '4 KiB', 65536: '64 KiB', 1048576: '1 MiB',
              4194304: '4 MiB'}
CPU_CELLS = tuple((size, 1) for size in SIZES) + ((4096, 8), (4096, 64))


def ratio(rows, field, size, concurrency, other):
    return (rows[('shm-notify', size, concurrency)][field] /
            rows[(other, size, concurrency)][field])


def latency_target(size):
    return 0.4 if size == 64 else 0.3 if size <= 65536 else 0.2


# (name, its value in one run, the target, whether the value must be at most
# the target rather than at least).
TARGETS = []
for size in SIZES:
    TARGETS.append((f'p50 shm/uds {SIZE_NAMES[size]}',
                    lambda run, s=size: ratio(run, 'p50_us', s, 1, 'uds'),
                    latency_target(size), True))
TARGETS.append(('p50 shm/inproc, worst size',
                lambda run: max(ratio(run, 'p50_us', s, 1, 'inproc')
                                for s in SIZES), 1.3, True))
TARGETS.append(('calls/s shm/uds 4 KiB x64',
                lambda run: ratio(run, 'qps', 4096, 64, 'uds'), 3.0, False))
for size, concurrency in CPU_CELLS:
    TARGETS.append((f'cpu/call shm/uds {SIZE_NAMES[size]} x{concurrency}',
                    lambda run, s=size, c=concurrency: ratio(
                        run, 'cpu_us_per_call', s, c, 'uds'), 0.5, True))


def main(paths):
    if not paths or any(p.startswith('-') for p in paths):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    runs = []
    for path in paths:
        try:
            with open(path) as f:
                rows = json.load(f)
            runs.append({(row['transport'], row['size'], row['concurrency']):
                         row for row in rows if row['shape'] == 'unary'})
        except (OSError, ValueError, KeyError, TypeError) as error:
            print(f'{path}: not an ab_bench --json file: {error}',
                  file=sys.stderr)
            return 1
    header = ' '.join(f'{"run " + str(i + 1):>7}' for i in range(len(runs)))
    print(f'{"target":32} {header}  median  verdict')
    for name, value, target, at_most in TARGETS:
        try:
            values = [value(run) for run in runs]
        except KeyError as missing:
            print(f'{name:32} no row for {missing} in some run')
            continue
        median = statistics.median(values)
        met = median <= target if at_most else median >= target
        cells = ' '.join(f'{v:7.3f}' for v in values)
        bound = ('<= ' if at_most else '>= ') + f'{target:g}'
        print(f'{name:32} {cells}  {median:6.3f}  '
              f'{"met" if met else "MISSED"} ({bound})')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
