"""JPEG fragility of a model (issue 15 item 0): every natural-colour photo of ../shared/data/eyepacs-1024 (and the
full-resolution IDRiD photos) is served as it is and again after a re-encode at JPEG quality 95, 75 and 50, through
the service's own path (`ServedModel.predict` on the bytes). Prints, per quality, the distribution of |delta P(DR)|
(median, p95, max), how many photos move by more than 0.05, and how many change side of the model's threshold.
Target (issue 15): a q95 re-encode moves no probability by more than 0.05.

    .venv/bin/python benchmarks/jpeg_robustness.py [--model runs/demo/model] [--limit N] [--qualities 95 75 50]
"""
import argparse, io, json, time
from pathlib import Path
import numpy as np
from PIL import Image
from dr_detection.config import shared_data
from dr_detection.serve import ServedModel

TARGET = 0.05  # largest |delta P(DR)| allowed after a q95 re-encode

def reencode(data:bytes, quality:int) -> bytes:
    "The photo decoded and saved again as a baseline JPEG at `quality` (4:2:0, as most cameras and PIL do)."
    with Image.open(io.BytesIO(data)) as im:
        b = io.BytesIO(); im.convert('RGB').save(b, 'JPEG', quality=quality); return b.getvalue()

def photos(data_dir:Path, idrid:bool=True, limit:int|None=None) -> list[Path]:
    "eyepacs-1024's photos (every k-th to `limit`), then the IDRiD ones."
    ep = sorted((data_dir/'eyepacs-1024'/'train').glob('*.jpeg'))
    if limit: ep = ep[::max(1, len(ep)//limit)][:limit]
    return ep + (sorted((data_dir/'fullres'/'idrid').glob('*.jpg')) if idrid else [])

def summary(d:np.ndarray, flips:int) -> dict:
    "Median, p95 and max of |delta|, the count over the target and the threshold flips."
    return dict(n=len(d), median=float(np.median(d)), p95=float(np.percentile(d, 95)), max=float(d.max()),
                over_target=int((d > TARGET).sum()), threshold_flips=int(flips))

def measure(model:ServedModel, files, qualities) -> dict:
    "Per quality and source: the summary of |served(re-encoded) - served(original)|."
    base, moved = {}, {q: {} for q in qualities}
    for f in files:
        data = f.read_bytes(); src = 'idrid' if 'IDRiD' in f.name else 'eyepacs-1024'
        p0 = model.predict(data)['probability']; base[f.name] = (src, p0)
        for q in qualities: moved[q][f.name] = model.predict(reencode(data, q))['probability']
    out = {}
    for q in qualities:
        for src in sorted({s for s, _ in base.values()}):
            names = [n for n, (s, _) in base.items() if s == src]
            d = np.array([abs(moved[q][n] - base[n][1]) for n in names])
            flips = sum((moved[q][n] >= model.threshold) != (base[n][1] >= model.threshold) for n in names)
            out[f"q{q} {src}"] = summary(d, flips)
    return out

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', type=Path, default=Path('runs/demo/model'))
    p.add_argument('--data', type=Path, default=shared_data())
    p.add_argument('--limit', type=int, default=None, help='at most this many eyepacs-1024 photos (default: all 480)')
    p.add_argument('--no-idrid', action='store_true', help='leave out the 20 full-resolution IDRiD photos')
    p.add_argument('--qualities', type=int, nargs='+', default=[95, 75, 50])
    p.add_argument('--json', type=Path, default=None, help='also write the results here')
    a = p.parse_args(argv)
    if not (a.data/'eyepacs-1024').is_dir(): print(f'{a.data}/eyepacs-1024 not found: benchmark skipped'); return
    if not (a.model/'model.json').exists():
        print(f'no model folder at {a.model} (make demo): benchmark skipped'); return
    m, t = ServedModel(a.model, threads=0), time.perf_counter()
    try: res = measure(m, photos(a.data, not a.no_idrid, a.limit), a.qualities)
    finally: m.close()
    print(f"model {a.model} ({m.meta.arch}, {m.size} px, threshold {m.threshold:.4g}); {time.perf_counter() - t:.0f}s")
    print(f"{'re-encode, source':<24}{'n':>5}{'median':>10}{'p95':>10}{'max':>10}{'>0.05':>7}{'flips':>7}")
    for k, r in res.items():
        print(f"{k:<24}{r['n']:>5}{r['median']:>10.4f}{r['p95']:>10.4f}{r['max']:>10.4f}{r['over_target']:>7}"
              f"{r['threshold_flips']:>7}")
    q95 = [r['max'] for k, r in res.items() if k.startswith('q95 ')]
    if q95: print(f"target (q95 re-encode moves no probability by more than {TARGET}): "
                  f"{'met' if max(q95) <= TARGET else 'NOT met'} (max {max(q95):.4f})")
    if a.json: a.json.write_text(json.dumps(dict(model=str(a.model), results=res), indent=2))

if __name__ == '__main__': main()
