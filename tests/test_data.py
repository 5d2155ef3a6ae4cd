"Ingestion, label mapping and split on the real EyePACS label files (skipped where ../shared/data is absent), and reproduce's error reporting."
import json, time
import nbformat
import pandas as pd
import pytest
from dr_detection.config import load_config
from dr_detection.data import read_labels, scan_images, build_manifest, split_patients, LabelFileError, run_data, read_table
from dr_detection.reproduce import reproduce, ReproduceError

def test_real_trainlabels_parse_fast(shared):
    t = time.perf_counter()
    df = read_labels(shared/'labels/trainLabels.csv')
    assert time.perf_counter() - t < 5
    assert len(df) == 35126
    raw = pd.read_csv(shared/'labels/trainLabels.csv')
    assert df.grade.value_counts().sort_index().tolist() == raw.level.value_counts().sort_index().tolist()

def test_real_eyeq_files_parse(shared):
    for f, n in [('Label_EyeQ_train.csv', 12543), ('Label_EyeQ_test.csv', 16249)]:
        df = read_labels(shared/'labels'/f)
        assert len(df) == n and set(df.quality) <= {0, 1, 2} and not df.id.str.endswith('.jpeg').any()

def test_real_split_no_patient_leak(shared):
    labels = read_labels(shared/'labels/trainLabels.csv')
    files = pd.DataFrame({'id': labels.id, 'path': '', 'duplicate': False})
    m, rep = build_manifest(labels, files, load_config().data.label_map)
    m['split'] = split_patients(m)
    assert m.groupby('patient').split.nunique().max() == 1
    assert m.split.notna().all()
    # 80/20 by patient, 20% of the rest for validation
    pat = m.groupby('patient').split.first().value_counts(normalize=True)
    assert abs(pat['test'] - 0.2) < 0.01 and abs(pat['valid'] - 0.16) < 0.01
    # counts per grade match the file, and the mapping is the default one
    assert m.grade.value_counts().sort_index().tolist() == labels.grade.value_counts().sort_index().tolist()
    assert set(m.loc[m.grade.isin([1, 2]), 'label'].isna()) == {True}
    assert set(m.loc[m.grade >= 3, 'label']) == {1}

def test_real_folder_partial_download(shared):
    labels = read_labels(shared/'labels/trainLabels.csv')
    files = scan_images(shared/'eyepacs-1024/train')
    m, rep = build_manifest(labels, files, {0: 0, 3: 1, 4: 1})
    assert len(m) == len(files) == 480
    assert rep['labels_without_file'] == 35126 - 480 and rep['files_without_label'] == 0
    assert m.patient.nunique() == 240 and set(m.eye) == {'left', 'right'}

@pytest.mark.parametrize('text,msg', [
    ('image,level\n1_left,0\n1_left,3\n', 'duplicate image ids'),
    ('image,level\n1_left,7\n', 'must be one of'),
    ('image,level\n1_left,-1\n', 'must be one of'),
    ('image,level\n1_left,\n', 'must be one of'),
    ('name,grade\n1_left,0\n', 'expected columns'),
    ('image,level\n', 'no label rows'),
    ('\x00\x01\x02binary', 'expected columns'),
])
def test_bad_label_files(tmp_path, text, msg):
    f = tmp_path/'labels.csv'; f.write_text(text)
    with pytest.raises(LabelFileError, match=msg): read_labels(f)

def test_missing_label_file(tmp_path):
    with pytest.raises(LabelFileError, match='not found'): read_labels(tmp_path/'nope.csv')

def test_run_data_demo(tmp_path):
    cfg = load_config(overrides={'data.demo_patients': 6})
    m = run_data(cfg, tmp_path)
    assert (tmp_path/'manifest.csv').exists() and (tmp_path/'class_balance.png').exists()
    rep = json.loads((tmp_path/'data_report.json').read_text())
    assert rep['files_without_label'] == 0 and rep['labels_without_file'] == 0
    assert m.groupby('patient').split.nunique().max() == 1
    # paths are stored relative to the run folder and read back absolute
    assert pd.read_csv(tmp_path/'manifest.csv').path.str.startswith('demo_data/train/').all()
    assert read_table(tmp_path, 'manifest.csv').path.tolist() == m.path.tolist()
    # originals untouched: a second run reuses the same demo files
    before = {p: p.stat().st_mtime_ns for p in (tmp_path/'demo_data/train').iterdir()}
    run_data(cfg, tmp_path)
    assert before == {p: p.stat().st_mtime_ns for p in (tmp_path/'demo_data/train').iterdir()}

def test_reproduce_names_failing_notebook_and_cell(tmp_path):
    nbs = tmp_path/'nbs'; nbs.mkdir()
    ok, bad = nbformat.v4.new_notebook(), nbformat.v4.new_notebook()
    for nb in (ok, bad):
        nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'python3', 'language': 'python'}
        nb.cells.append(nbformat.v4.new_code_cell('config = None\nrun_dir = None', metadata={'tags': ['parameters']}))
    ok.cells.append(nbformat.v4.new_code_cell('x = 1'))
    bad.cells.append(nbformat.v4.new_code_cell('1/0'))
    nbformat.write(ok, nbs/'00_ok.ipynb'); nbformat.write(bad, nbs/'01_bad.ipynb')
    cfg = tmp_path/'c.yaml'; cfg.write_text('name: t\n')
    with pytest.raises(ReproduceError, match=r'01_bad.ipynb failed in cell 3 of the executed notebook \(`1/0`\): ZeroDivisionError'):
        reproduce(cfg, tmp_path/'out', nbs_path=nbs)
    assert (tmp_path/'out/notebooks/00_ok.ipynb').exists() and (tmp_path/'out/notebooks/01_bad.ipynb').exists()
