"""Speed of 02_preprocess on the real full-resolution photos (../shared/data/fullres, repeated to a few hundred).

Compares, in one run on the same machine:
  naive    : PIL full decode + resize to the output size (Pillow's default bicubic), one process (a first attempt)
  shipped  : `run_preprocess` as the pipeline calls it (JPEG draft decode, disc fit, crop, resize, JPEG encode,
             atomic write, normalisation sums; all cores)
and reports where the gain comes from (draft decoding alone, one process) and the cache format's decode speed
(JPEG q95 vs PNG). The machine may be shared: the two are run in alternating rounds and each side's best is
kept; images per CPU-second are printed beside images/s. The ratio shipped/naive (images/s) is printed last.

    nice -n 10 .venv/bin/python benchmarks/preprocess.py [--reps 8] [--size 512]
"""
import argparse, io, json, os, shutil, tempfile, time
from pathlib import Path
import pandas as pd
from PIL import Image
from dr_detection.config import load_config, shared_data
from dr_detection.fundus import decode
from dr_detection.preprocess import run_preprocess

def _cpu() -> float:
    "CPU seconds used so far by this process and its finished children."
    import resource
    return sum(getattr(resource.getrusage(w), f) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN) for f in ('ru_utime', 'ru_stime'))

def decode_gain(files, size):
    "Where the gain comes from: full vs draft decoding, one process, each distinct photo once."
    t = time.perf_counter()
    for f in files: Image.open(f).convert('RGB')
    full_dec = (time.perf_counter()-t)/len(files)
    t = time.perf_counter()
    for f in files: decode(f, size)
    draft_dec = (time.perf_counter()-t)/len(files)
    print(f'decode only, 1 process: full {1000*full_dec:.0f} ms/img, draft (short side >= {size}) {1000*draft_dec:.0f} ms/img: '
          f'{full_dec/draft_dec:.1f}x')

def naive(jobs, size) -> tuple[float, float]:
    "Images/s and images per CPU-second of a full decode + resize (Pillow's default resampling), one process."
    c0, t = _cpu(), time.perf_counter()
    for f in jobs: Image.open(f).convert('RGB').resize((size, size))
    return len(jobs)/(time.perf_counter()-t), len(jobs)/(_cpu()-c0)

def shipped(cfg, sub, jobs, files) -> tuple[float, float, dict]:
    "Images/s, images per CPU-second and `preprocess.json` of `run_preprocess` on `jobs` in run folder `sub`."
    q = pd.DataFrame(dict(id=[f'{f.stem}_r{i//len(files)}' for i, f in enumerate(jobs)], path=[str(f) for f in jobs],
                          excluded='', keep=True, split='train'))
    q.to_csv(sub/'quality.csv', index=False)
    c0, t = _cpu(), time.perf_counter()
    run_preprocess(cfg, sub, progress=False)
    el, c = time.perf_counter()-t, _cpu()-c0
    meta = json.loads((sub/'preprocess.json').read_text())
    assert meta['counts']['prepared'] == len(jobs), meta['counts']
    return len(jobs)/el, len(jobs)/c, meta

def cache_decode(outs, size, jpeg_quality):
    "Decode speed of the prepared images as JPEG (as cached) vs PNG."
    datas = {'jpeg': [o.read_bytes() for o in outs], 'png': []}
    for o in outs:
        b = io.BytesIO(); Image.open(o).save(b, 'PNG'); datas['png'].append(b.getvalue())
    ms = {}
    for fmt, ds in datas.items():
        t = time.perf_counter()
        for _ in range(5):
            for d in ds: Image.open(io.BytesIO(d)).convert('RGB')
        ms[fmt] = 1000*(time.perf_counter()-t)/(5*len(ds))
    kb = {k: sum(map(len, v))/len(v)/1000 for k, v in datas.items()}
    print(f'cache decode, {size} px: JPEG q{jpeg_quality} {ms["jpeg"]:.2f} ms ({kb["jpeg"]:.0f} kB), '
          f'PNG {ms["png"]:.2f} ms ({kb["png"]:.0f} kB): PNG is {ms["png"]/ms["jpeg"]:.1f}x slower')

def compare(cfg, run, files, jobs, rounds) -> tuple[dict, dict, dict, Path]:
    "Naive and shipped in alternating rounds (the machine is shared): each side's best round and its CPU rate."
    best, cpu, meta, sub = dict(naive=0., shipped=0.), {}, {}, run
    naive_n = max(len(files), len(jobs)//4)
    for rnd in range(rounds):
        r_naive, c_naive = naive(jobs[:naive_n], cfg.preprocess.size)
        if r_naive > best['naive']: best['naive'], cpu['naive'] = r_naive, c_naive
        sub = run/f'r{rnd}'; sub.mkdir()
        r_ship, c_ship, meta = shipped(cfg, sub, jobs, files)
        if r_ship > best['shipped']: best['shipped'], cpu['shipped'] = r_ship, c_ship
        print(f'  round {rnd+1}: naive {r_naive:.2f}, shipped {r_ship:.2f} images/s', flush=True)
    return best, cpu, meta, sub

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--reps', type=int, default=8, help='times each full-resolution photo is repeated')
    ap.add_argument('--size', type=int, default=512, help='output side (cfg.preprocess.size)')
    ap.add_argument('--rounds', type=int, default=2, help='alternating rounds; the best of each side is kept')
    a = ap.parse_args()
    files = sorted(p for p in (shared_data()/'fullres').glob('*/*') if p.suffix.lower() in ('.jpg', '.jpeg'))
    if not files: print(f'no photos under {shared_data()}/fullres: benchmark skipped'); return
    jobs = files*a.reps
    mp = sum(Image.open(f).size[0]*Image.open(f).size[1] for f in files)/len(files)/1e6
    print(f'{len(jobs)} images ({len(files)} full-resolution photos x {a.reps}, {mp:.1f} MP on average), output {a.size} px, '
          f'{os.cpu_count()} cores')
    decode_gain(files, a.size)
    run = Path(tempfile.mkdtemp(prefix='dr_bench_prep_'))
    cfg = load_config(None, overrides={'preprocess.size': a.size})
    try:
        best, cpu, meta, sub = compare(cfg, run, files, jobs, a.rounds)
        print(f'naive   (full decode + resize, 1 process): {best["naive"]:6.2f} images/s  ({cpu["naive"]:.1f} images per CPU-second)')
        print(f'shipped (run_preprocess, {cfg.preprocess.workers or os.cpu_count()} processes): {best["shipped"]:6.2f} images/s  '
              f'({cpu["shipped"]:.1f} images per CPU-second; disc methods {meta["disc_methods"]})')
        t = time.perf_counter(); run_preprocess(cfg, sub, progress=False)
        print(f'resume  (everything up to date): {len(jobs)/(time.perf_counter()-t):.0f} images/s')
        cache_decode(sorted((sub/'preprocessed').glob('*.jpeg'))[:len(files)], a.size, cfg.preprocess.jpeg_quality)
    finally: shutil.rmtree(run, ignore_errors=True)
    print(f'speedup shipped/naive: {best["shipped"]/best["naive"]:.1f}x')

if __name__ == '__main__': main()
