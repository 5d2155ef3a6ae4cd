"""Benchmark of 01_quality: the full automatic check over ../shared/data/eyepacs-1024 against merely decoding the same
images at the same reduced size (JPEG draft mode), both on all cores with the same process pool. Prints the ratio last.

    .venv/bin/python benchmarks/quality.py [--folder ../shared/data/eyepacs-1024/train] [--repeats 3] [--workers N]
"""
import argparse, os, time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
import numpy as np
from dr_detection.config import load_config, shared_data
from dr_detection.fundus import decode
from dr_detection.quality import QualityParams, check_image

DEFAULT = shared_data()/'eyepacs-1024'/'train'

def _decode(path, size):
    "Decode only, at the check's reduced size (what any reader of the photo must pay)."
    return np.asarray(decode(path, size, 'long')).shape

def _check(path, params):
    "The full automatic check."
    return check_image(path, params)['ok']

def _decode_chunk(args): return [_decode(p, args[1]) for p in args[0]]
def _check_chunk(args): return [_check(p, args[1]) for p in args[0]]

def timed(ex, fn, paths, arg, workers):
    "Seconds to run `fn` over `paths` in pool `ex`, in equal chunks (one round trip per chunk)."
    n = max(1, len(paths)//(workers*4))
    chunks = [(paths[i:i+n], arg) for i in range(0, len(paths), n)]
    t = time.perf_counter(); list(ex.map(fn, chunks)); return time.perf_counter() - t

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--folder', type=Path, default=DEFAULT)
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--workers', type=int, default=None)
    a = p.parse_args(argv)
    if not a.folder.is_dir(): print(f'{a.folder} not found: benchmark skipped'); return
    paths = sorted(str(f) for f in a.folder.glob('*.jpeg'))
    params = QualityParams.of(load_config().quality)
    workers = a.workers or os.cpu_count() or 1
    print(f'{len(paths)} images in {a.folder}, decode_size {params.decode_size}, {workers} workers, best of {a.repeats}')
    with ProcessPoolExecutor(workers) as ex:
        timed(ex, _check_chunk, paths[:64], params, workers)  # warm the workers (imports)
        td, tc = [], []
        for _ in range(a.repeats):  # alternate, so a change of machine load hits both
            td.append(timed(ex, _decode_chunk, paths, params.decode_size, workers))
            tc.append(timed(ex, _check_chunk, paths, params, workers))
    d, c = min(td), min(tc)
    print(f'decode only : {d:.3f} s  ({d/len(paths)*1e3:.2f} ms/image/worker-pool)')
    print(f'full check  : {c:.3f} s  ({c/len(paths)*1e3:.2f} ms/image/worker-pool)')
    print(f'ratio check/decode: {c/d:.2f}')

if __name__ == '__main__': main()
