"""JPEG fragility of a model (issue 15 item 0): every natural-colour photo of ../shared/data/eyepacs-1024 (and the
full-resolution IDRiD photos) is served as it is and again after a re-encode at JPEG quality 95, 75 and 50, through
the service's own path (`ServedModel.predict` on the bytes). Prints, per quality, the distribution of |delta P(DR)|
(median, p95, max), how many photos move by more than 0.05, how many get another outcome (referable, not referable,
ungradable), and the same |delta| over the photos the service grades both times (the others are answered `ungradable`).
Target (issue 15): a q95 re-encode moves no probability by more than 0.05.

    .venv/bin/python benchmarks/jpeg_robustness.py [--model runs/demo/model] [--limit N] [--qualities 95 75 50]
"""
import argparse, json, time
from pathlib import Path
import pandas as pd
from dr_detection.config import shared_data
from dr_detection.preprocess import reencode
from dr_detection.serve import ServedModel

TARGET = 0.05  # largest |delta P(DR)| allowed after a q95 re-encode

def photos(data_dir:Path, idrid:bool=True, limit:int|None=None) -> list[Path]:
    "eyepacs-1024's photos (every k-th to `limit`), then the IDRiD ones."
    ep = sorted((data_dir/'eyepacs-1024'/'train').glob('*.jpeg'))
    if limit: ep = ep[::max(1, len(ep)//limit)][:limit]
    return ep + (sorted((data_dir/'fullres'/'idrid').glob('*.jpg')) if idrid else [])

def summary(t:pd.DataFrame, q:int) -> dict:
    """For re-encode quality `q`: |delta| over all photos (median, p95, max, count over the target), outcome changes,
    and |delta| over the photos the service grades both times (what a screening decision can see)."""
    d, both = (t[f'p_q{q}'] - t.p).abs(), t.gradable & t[f'gradable_q{q}']
    return dict(n=len(t), median=float(d.median()), p95=float(d.quantile(.95)), max=float(d.max()),
                over_target=int((d > TARGET).sum()), outcome_changes=int((t.outcome != t[f'outcome_q{q}']).sum()),
                gradable_n=int(both.sum()), gradable_max=float(d[both].max()) if both.any() else float('nan'),
                gradable_over=int((d[both] > TARGET).sum()))

def measure(model:ServedModel, files, qualities) -> tuple[dict, pd.DataFrame]:
    "Per quality and source: `summary` of served(re-encoded) against served(original); and a row per photo."
    rows = []
    for f in files:
        data = f.read_bytes(); r = model.predict(data)
        row = dict(photo=f.name, source='idrid' if 'IDRiD' in f.name else 'eyepacs-1024', p=r['probability'],
                   outcome=r['outcome'], gradable=r['gradable'])
        for q in qualities:
            r = model.predict(reencode(data, q))
            row |= {f'p_q{q}': r['probability'], f'outcome_q{q}': r['outcome'], f'gradable_q{q}': r['gradable']}
        rows.append(row)
    t = pd.DataFrame(rows)
    return {f"q{q} {src}": summary(g, q) for q in qualities for src, g in t.groupby('source')}, t

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', type=Path, default=Path('runs/demo/model'))
    p.add_argument('--data', type=Path, default=shared_data())
    p.add_argument('--limit', type=int, default=None, help='at most this many eyepacs-1024 photos (default: all 480)')
    p.add_argument('--no-idrid', action='store_true', help='leave out the 20 full-resolution IDRiD photos')
    p.add_argument('--qualities', type=int, nargs='+', default=[95, 75, 50])
    p.add_argument('--json', type=Path, default=None, help='also write the results here')
    p.add_argument('--csv', type=Path, default=None, help="also write each photo's probabilities here")
    a = p.parse_args(argv)
    if not (a.data/'eyepacs-1024').is_dir(): print(f'{a.data}/eyepacs-1024 not found: benchmark skipped'); return
    if not (a.model/'model.json').exists():
        print(f'no model folder at {a.model} (make demo): benchmark skipped'); return
    m, t = ServedModel(a.model, threads=0), time.perf_counter()
    try: res, rows = measure(m, photos(a.data, not a.no_idrid, a.limit), a.qualities)
    finally: m.close()
    print(f"model {a.model} ({m.meta.arch}, {m.size} px, threshold {m.threshold:.4g}); {time.perf_counter() - t:.0f}s")
    print(f"{'':<24}{'all photos':^39}{'':>9}{'graded both times':^22}")
    print(f"{'re-encode, source':<24}{'n':>5}{'median':>10}{'p95':>10}{'max':>8}{'>0.05':>6}{'outcome':>9}"
          f"{'n':>6}{'max':>9}{'>0.05':>7}")
    for k, r in res.items():
        print(f"{k:<24}{r['n']:>5}{r['median']:>10.4f}{r['p95']:>10.4f}{r['max']:>8.4f}{r['over_target']:>6}"
              f"{r['outcome_changes']:>9}{r['gradable_n']:>6}{r['gradable_max']:>9.4f}{r['gradable_over']:>7}")
    q95 = [r['max'] for k, r in res.items() if k.startswith('q95 ')]
    if q95: print(f"target (q95 re-encode moves no probability by more than {TARGET}): "
                  f"{'met' if max(q95) <= TARGET else 'NOT met'} (max {max(q95):.4f})")
    if a.json: a.json.write_text(json.dumps(dict(model=str(a.model), results=res), indent=2))
    if a.csv: rows.to_csv(a.csv, index=False)

if __name__ == '__main__': main()
