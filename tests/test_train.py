"Stage 03 (dr_detection.train): ONNX parity on both bodies, pretrained weights, artifacts and loading them back."
import json
from unittest import mock
import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from PIL import Image

from dr_detection.config import load_config
from dr_detection.data import read_table, write_table
from dr_detection.infer import load_meta
from dr_detection.preprocess import IMAGENET_STATS
from dr_detection.synthetic import draw_fundus
from dr_detection.train import (build_model, export_onnx, onnx_parity, load_torch_model, run_train, PretrainedWeightsError,
                                training_rows)

SIZE = 64


def _norm(imgs, mean, std):
    x = torch.stack([torch.tensor(np.asarray(i.convert('RGB')) / 255., dtype=torch.float32).permute(2, 0, 1) for i in imgs])
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
    "A run folder with a `preprocessed.csv` of synthetic square fundus images (grade 0 or 4), as 02 would write it."
    d = tmp_path_factory.mktemp('run'); (d / 'preprocessed').mkdir()
    rng, rows = np.random.default_rng(0), []
    for p in range(10):
        split = 'valid' if p % 3 == 0 else 'test' if p == 8 else 'train'
        for eye, g in (('left', 0), ('right', 4 if p % 2 else 0)):
            f = f'preprocessed/{p}_{eye}.jpeg'
            img = draw_fundus(rng, (2 * SIZE, 2 * SIZE), grade=g, eye=eye, clip=False, work_width=2 * SIZE)
            img.resize((SIZE, SIZE)).save(d / f, quality=95)
            rows.append(dict(id=f'{p}_{eye}', patient=p, eye=eye, grade=g, label=int(g > 2), excluded='', source='demo', path=f,
                             split=split, keep=True, prep_path=f, prep_error=''))
    rows.append(dict(rows[0], id='x_left', patient='x', excluded='grade 1 excluded by label_map', label=''))  # must be ignored
    pd.DataFrame(rows).to_csv(d / 'preprocessed.csv', index=False)
    return d


@pytest.mark.parametrize('arch', ['resnet18', 'efficientnet_lite0'])
def test_onnx_parity(tmp_path, arch):
    "ONNX (onnxruntime) and PyTorch agree on the same inputs: max abs difference on probabilities <= 1e-4; any batch size."
    torch.manual_seed(0)
    net = build_model(arch, pretrained=arch == 'efficientnet_lite0').eval()
    with torch.no_grad(): net.fc.weight.mul_(20)  # spread the probabilities away from 0.5 so the check means something
    f = export_onnx(net, tmp_path / 'model.onnx', SIZE)
    rng = np.random.default_rng(1)
    imgs = [draw_fundus(rng, (2 * SIZE, 2 * SIZE), grade=g, clip=False, work_width=2 * SIZE).resize((SIZE, SIZE)) for g in (0, 4, 0)]
    for x in (_norm(imgs, **IMAGENET_STATS), torch.randn(1, 3, SIZE, SIZE)):
        par = onnx_parity(net, f, x)
        assert par['prob'] <= 1e-4 and par['cam_rel'] <= 1e-4, par
    sess = ort.InferenceSession(str(f))
    assert [i.name for i in sess.get_inputs()] == ['image'] and [o.name for o in sess.get_outputs()] == ['prob', 'cam']
    prob, cam = sess.run(None, {'image': np.zeros((5, 3, SIZE, SIZE), np.float32)})
    assert prob.shape == (5,) and cam.shape == (5, 2, 2) and prob.dtype == np.float32


def test_pretrained_offline_message():
    with mock.patch('torchvision.models.WeightsEnum.get_state_dict', side_effect=OSError('network is unreachable')):
        with pytest.raises(PretrainedWeightsError) as e: build_model('resnet50', pretrained=True)
    assert 'train.weights_path' in str(e.value) and 'pretrained: false' in str(e.value)


def test_weights_path(tmp_path):
    import torchvision
    from safetensors.torch import save_file
    sd = torchvision.models.resnet34().state_dict()
    torch.save(sd, tmp_path / 'r34.pth'); save_file(sd, str(tmp_path / 'r34.safetensors'))
    for f in ('r34.pth', 'r34.safetensors'):
        net = build_model('resnet34', pretrained=True, weights_path=tmp_path / f)
        torch.testing.assert_close(net.body[0].weight, sd['conv1.weight'])
    with pytest.raises(PretrainedWeightsError): build_model('resnet18', pretrained=True, weights_path=tmp_path / 'r34.pth')


def test_training_rows(prepared):
    df = training_rows(read_table(prepared, 'preprocessed.csv'))
    assert set(df.split) == {'train', 'valid'} and 'x' not in set(df.patient.astype(str)) and df.label.dtype.kind == 'i'
    assert all((prepared / 'preprocessed' / f'{i}.jpeg').samefile(p) for i, p in zip(df.id, df.prep_path))


def test_run_train_and_load_from_artifacts(prepared):
    "A tiny end-to-end run writes the artifacts; the model loads back from them alone and agrees with its ONNX graph."
    cfg = load_config(None, overrides={'preprocess.size': SIZE, 'train.arch': 'resnet18', 'train.epochs': 1, 'train.batch_size': 4})
    meta = run_train(cfg, prepared)
    md = prepared / 'model'
    assert {p.name for p in md.iterdir()} == {'model.json', 'model.onnx', 'model.safetensors'}
    assert (prepared / 'train_log.csv').exists() and (prepared / 'training_curve.png').exists()
    j = json.loads((md / 'model.json').read_text())
    assert j == meta.model_dump(mode='json', exclude={'evaluation', 'cam_scale', 'cam_scale_source'}) and load_meta(md) == meta
    assert list(j) == ['format_version', 'arch', 'input_size', 'preprocess', 'normalize', 'class_names', 'threshold', 'threshold_source',
                       'quality', 'onnx', 'weights', 'training', 'config', 'code_version', 'created', 'screening']
    assert j['input_size'] == SIZE and j['threshold'] == 0.5 and j['training']['class_weighting'] == 'weighted_ce'
    assert j['training']['data']['train']['images'] == 10 and 'test' not in j['training']['data']
    net, meta2 = load_torch_model(md)
    imgs = [Image.open(p) for p in sorted((prepared / 'preprocessed').glob('*.jpeg'))[:6]]
    x = _norm(imgs, meta2.normalize.mean, meta2.normalize.std)
    assert onnx_parity(net, md / 'model.onnx', x)['prob'] <= 1e-4
    # the weights file is plain safetensors: no pickle anywhere
    from safetensors import safe_open
    with safe_open(str(md / 'model.safetensors'), 'pt') as f: assert 'fc.weight' in f.keys()


def test_stability_training_with_copies(prepared, tmp_path):
    "`train.consistency` trains on photo/copy pairs end to end: the penalty is logged per epoch and the model exports as usual."
    import shutil
    d = shutil.copytree(prepared, tmp_path / 'run')
    df = read_table(d, 'preprocessed.csv')
    df['prep_variant'] = [str(d / f'preprocessed/{r.id}.reenc.jpeg') if r.split == 'train' else '' for r in df.itertuples()]
    for r in df[df.split == 'train'].itertuples():   # stand-in for 02's re-encoded copies: a q40 JPEG of each crop
        Image.open(r.prep_path).save(r.prep_variant, quality=40)
    write_table(df, d, 'preprocessed.csv')
    cfg = load_config(None, overrides={'preprocess.size': SIZE, 'preprocess.source_jpeg': [40, 40], 'train.consistency': 1.,
                                       'train.arch': 'resnet18', 'train.epochs': 1, 'train.batch_size': 4})
    meta = run_train(cfg, d)
    log = pd.read_csv(d / 'train_log.csv')
    assert 'consistency' in log and (log.consistency > 0).all() and np.isfinite(log.valid_loss).all()
    assert json.loads((d / 'model' / 'model.json').read_text())['config']['train']['consistency'] == 1.
    assert meta.training['data']['train']['images'] == 10
