"""Leave-one-source-out check (issue 15 item 2): score a model trained WITHOUT eyepacs-1024 (configs/loso*.yaml hold
its patients out through `data.exclude_patients_of`) on every natural-colour eyepacs-1024 photo and on the 20
full-resolution IDRiD photos (all with DR), through `dr-evaluate` (the service's prepare path, the model's own quality
check and threshold). Prints, per source: photos, DR photos, ROC AUC (95% patient-bootstrap CI), sensitivity and
specificity at the model's threshold, and the threshold that 0.85 sensitivity would need there (with the specificity
it would give). Targets (issue 15): eyepacs-1024 sensitivity >= 0.85 with specificity >= 0.80; IDRiD sensitivity >= 0.9.

    .venv/bin/python benchmarks/held_out_sources.py --model runs/loso-quick-eq/model --out runs/loso-quick-eq/held-out
"""
import json
from pathlib import Path
import numpy as np
import pandas as pd
from fastcore.script import call_parse
from dr_detection.config import shared_data
from dr_detection.data import parse_id, read_labels
from dr_detection.evaluate import evaluate_manifest
from dr_detection.infer import load_meta

TARGETS = {'eyepacs-1024': dict(sensitivity=0.85, specificity=0.80), 'idrid': dict(sensitivity=0.9)}

def manifests(data:Path, label_map:dict, out:Path) -> dict:
    "Manifest CSVs of eyepacs-1024 (grades from trainLabels.csv mapped by `label_map`) and of IDRiD (all DR)."
    grades = read_labels(data/'labels'/'trainLabels.csv').set_index('id').grade
    ep = [dict(id=p.stem, patient=pat, eye=eye, path=str(p), source='eyepacs-1024',
               label=label_map.get(int(grades[p.stem])) if p.stem in grades.index else None)
          for p in sorted((data/'eyepacs-1024'/'train').glob('*.jpeg')) for pat, eye in [parse_id(p.stem)]]
    idrid = [dict(id=p.stem, patient=p.stem, eye='unknown', path=str(p), source='idrid', label=1)
             for p in sorted((data/'fullres'/'idrid').glob('*.jpg'))]
    out.mkdir(parents=True, exist_ok=True); files = {}
    for name, rows in [('eyepacs-1024', ep), ('idrid', idrid)]:
        df = pd.DataFrame(rows); df = df[df.label.notna()]; df['label'] = df.label.astype(int)
        df.to_csv(files.setdefault(name, out/f'{name}.csv'), index=False)
    return files

def needed(pred:pd.DataFrame, target:float=0.85) -> tuple:
    "The highest threshold reaching `target` sensitivity on the gradable rows, and the specificity there."
    g = pred[pred.gradable.astype(bool) & pred.label.notna()] if 'gradable' in pred else pred[pred.label.notna()]
    pos = np.sort(g.prob[g.label == 1].to_numpy())[::-1]
    if not len(pos) or not (g.label == 0).any(): return np.nan, np.nan
    t = pos[int(np.ceil(target*len(pos) - 1e-9)) - 1]
    return float(t), float((g.prob[g.label == 0] < t).mean())

def row(name:str, m:dict, pred:pd.DataFrame) -> dict:
    "One line of the table: counts, AUC with CI, the operating point and the threshold 0.85 sensitivity needs."
    te = m['test']; ci = te.get('ci', {}).get('auc', {}); t85, spec85 = needed(pred)
    return dict(source=name, photos=te['n'], dr=te['n_pos'], auc=te.get('auc'), auc_lo=ci.get('lo'), auc_hi=ci.get('hi'),
                threshold=m['threshold']['threshold'], sensitivity=te['sensitivity'], specificity=te.get('specificity'),
                threshold_for_085=t85, specificity_there=spec85)

@call_parse
def main(model:Path=None,            # model folder (trained without eyepacs-1024's patients)
         out:Path=None,              # folder for the manifests and dr-evaluate's outputs
         data:Path=None,             # the shared data folder (default: `shared_data()`)
         bootstrap:int=1000):        # patient bootstrap resamples for the CIs
    "Sensitivity and specificity at the model's threshold on the held-out natural photos and on IDRiD."
    if not (model and out): raise SystemExit('--model and --out are required')
    data = Path(data) if data else shared_data()
    if not (data/'eyepacs-1024').is_dir(): print(f'{data}/eyepacs-1024 not found: benchmark skipped'); return
    meta = load_meta(model)
    rows = []
    label_map = {int(k): v for k, v in (meta.config.get('data', {}).get('label_map') or {0: 0, 3: 1, 4: 1}).items()}
    for name, f in manifests(data, label_map, Path(out)).items():
        m = evaluate_manifest(model, f, Path(out)/name, 'all', False, bootstrap, 0)
        rows.append(row(name, m, pd.read_csv(Path(out)/name/'predictions.csv')))
    t = pd.DataFrame(rows).set_index('source')
    print(t.to_string(float_format='{:.3f}'.format))
    for s, tg in TARGETS.items():
        if s in t.index:
            ok = all(t.loc[s, k] >= v for k, v in tg.items())
            print(f"{s}: target {tg} {'met' if ok else 'NOT met'}")
    (Path(out)/'held_out.json').write_text(json.dumps(dict(model=str(model), rows=rows), indent=2, default=float))
