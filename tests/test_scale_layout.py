"The whole Kaggle download as one dataset: two image folders, two label files of both formats (issue 13 item 2)."
import os, shutil
from pathlib import Path
import pandas as pd
import pytest
from dr_detection.config import load_config
from dr_detection.data import read_label_files, read_table, run_data

ROOT = Path(__file__).resolve().parent.parent


def _link(src:Path, dst:Path):
    "Hard link `src` at `dst` (a copy where links are not allowed)."
    try: os.link(src, dst)
    except OSError: shutil.copyfile(src, dst)


@pytest.fixture(scope='module')
def kaggle_layout(shared, tmp_path_factory) -> Path:
    """The real photos of eyepacs-1024 laid out like the full download: half the patients in train/ with trainLabels.csv
    (image,level), the other half in test/ with retinopathy_solution.csv (image,level,Usage), and one patient whose
    left eye is in train/ and right eye in test/."""
    d = tmp_path_factory.mktemp('kaggle')
    labels = pd.read_csv(shared/'labels/trainLabels.csv').set_index('image')
    photos = sorted((shared/'eyepacs-1024/train').glob('*.jpeg'))
    patients = sorted({p.stem.rsplit('_', 1)[0] for p in photos})
    second = set(patients[len(patients) // 2:])
    split_patient = patients[0]
    rows = {'train': [], 'test': []}
    for p in photos:
        pat, eye = p.stem.rsplit('_', 1)
        half = 'test' if pat in second or (pat == split_patient and eye == 'right') else 'train'
        (d/half).mkdir(exist_ok=True); _link(p, d/half/p.name)
        rows[half].append(dict(image=p.stem, level=int(labels.level[p.stem])))
    pd.DataFrame(rows['train']).to_csv(d/'trainLabels.csv', index=False)
    sol = pd.DataFrame(rows['test']); sol['Usage'] = ['Public' if i % 3 == 0 else 'Private' for i in range(len(sol))]
    sol.to_csv(d/'retinopathy_solution.csv', index=False)
    return d


def test_config_lists_both_halves(kaggle_layout, shared, monkeypatch):
    "configs/eyepacs.yaml takes both folders and both label files (and EyeQ's two files)."
    monkeypatch.setenv('EYEPACS_DIR', str(kaggle_layout)); monkeypatch.setenv('EYEQ_DIR', str(shared/'labels'))
    cfg = load_config(ROOT/'configs/eyepacs.yaml')
    assert [p.name for p in cfg.data.images] == ['train', 'test']
    assert [p.name for p in cfg.data.labels] == ['trainLabels.csv', 'retinopathy_solution.csv']
    assert len(cfg.data.eyeq_labels) == 2


def test_joined_manifest(kaggle_layout, shared, tmp_path, monkeypatch):
    monkeypatch.setenv('EYEPACS_DIR', str(kaggle_layout)); monkeypatch.setenv('EYEQ_DIR', str(shared/'labels'))
    cfg = load_config(ROOT/'configs/eyepacs.yaml')
    m = run_data(cfg, tmp_path)
    n_train, n_test = (len(list((kaggle_layout/h).iterdir())) for h in ('train', 'test'))
    assert len(m) == n_train + n_test == 480 and m.id.is_unique
    # every photo found its label, in either file; Usage is kept as information for the second half only
    assert m.grade.notna().all() and (m.excluded != 'no label').all()
    folder = m.path.map(lambda p: Path(p).parent.name)
    assert (m.usage[folder == 'train'] == '').all() and set(m.usage[folder == 'test']) == {'Public', 'Private'}
    labels = read_label_files(cfg.data.labels)
    counts = labels.label_file.value_counts().to_dict()
    assert counts == {'trainLabels.csv': n_train, 'retinopathy_solution.csv': n_test}
    # patients never straddle splits, not even the one whose two eyes lie in different folders
    assert m.groupby('patient').split.nunique().max() == 1
    straddler = m.groupby('patient').filter(lambda g: g.path.map(lambda p: Path(p).parent.name).nunique() == 2)
    assert len(straddler) == 2 and straddler.split.nunique() == 1
    # the table on disk reads back the same, usage included
    back = read_table(tmp_path, 'manifest.csv')
    assert back.usage.tolist() == m.usage.tolist() and back.path.tolist() == m.path.tolist()
    assert set(back.split) == {'train', 'valid', 'test'}
