import functools, io, json, os, socket, subprocess, sys, time
from pathlib import Path
import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get('DR_DATA', ROOT.parent/'shared'/'data'))

@pytest.fixture(scope='session')
def shared():
    "The real-data folder ../shared/data, or skip the test when it is absent."
    if not (SHARED/'labels'/'trainLabels.csv').exists(): pytest.skip(f'real data folder {SHARED} not found')
    return SHARED

# ---- the service's fixtures (tests/test_serve*.py, tests/test_imports.py) ----

def jpeg(img:Image.Image, **kw) -> bytes:
    "`img` as JPEG bytes."
    b = io.BytesIO(); img.convert('RGB').save(b, 'JPEG', **kw); return b.getvalue()

@functools.cache
def _retina() -> Image.Image:
    from skimage import data
    return Image.fromarray(data.retina())

@functools.cache
def _photos() -> dict:
    r = _retina(); small = r.resize((512, 512))
    b = io.BytesIO(); small.save(b, 'PNG')
    dark = Image.fromarray((np.asarray(small) * 0.05).astype(np.uint8))
    return {'retina.jpeg': jpeg(r, quality=90), 'small.jpeg': jpeg(small, quality=90), 'small.png': b.getvalue(), 'dark.jpeg': jpeg(dark)}

@functools.cache
def _bad_inputs() -> dict:
    good = _photos()['retina.jpeg']
    gif = io.BytesIO(); _retina().resize((64, 64)).save(gif, 'GIF')
    bomb = io.BytesIO(); Image.new('L', (10000, 8000)).save(bomb, 'PNG')  # 80 MP in ~100 kB
    return {'zero-byte': (b'', 400), 'truncated JPEG': (good[:len(good)//2], 422),
            'non-image': (b'%PDF-1.4\n' + os.urandom(2000), 415), 'unsupported format (GIF)': (gif.getvalue(), 415),
            'decompression bomb': (bomb.getvalue(), 413)}

BAD_INPUTS = ('zero-byte', 'truncated JPEG', 'non-image', 'unsupported format (GIF)', 'decompression bomb')

@pytest.fixture(scope='session')
def retina() -> Image.Image:
    "A real colour fundus photograph (scikit-image's sample, 1411x1411)."
    return _retina()

@pytest.fixture(scope='session')
def photos() -> dict:
    "Valid uploads: the sample retina at two sizes, as JPEG and PNG, and a dark (ungradable) one."
    return _photos()

@pytest.fixture(scope='session')
def bad_inputs() -> dict:
    "name -> (bytes, expected status) for every kind of bad file (names: `BAD_INPUTS`; the size limit is tested apart)."
    return _bad_inputs()

@pytest.fixture(scope='session')
def model_run(tmp_path_factory) -> Path:
    "A run folder: model/ by 03_train's own `save_model` (untrained resnet18, 64 px) and a metrics.json."
    from dr_detection.config import load_config
    from dr_detection.train import build_model, save_model
    run = tmp_path_factory.mktemp('serve_run')
    cfg = load_config(None, overrides={'train.arch': 'resnet18', 'preprocess.size': 64})
    save_model(build_model('resnet18', pretrained=False), cfg, run/'model')
    (run/'metrics.json').write_text(json.dumps({'test': {'auc': 0.5, 'n': 10}, 'note': 'made by tests/conftest.py'}))
    return run

def _free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def rss_mb(pid:int) -> float:
    "Resident memory of process `pid` in MB (from /proc)."
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('VmRSS:'): return int(line.split()[1]) / 1024
    raise RuntimeError('no VmRSS')

class Server:
    "`dr-serve` in a subprocess on 127.0.0.1 (a real uvicorn); `stop()` ends it."
    def __init__(self, model_dir, *args, log_dir, env=None, timeout=90):
        import httpx
        self.port = _free_port(); self.url = f'http://127.0.0.1:{self.port}'
        self.log = open(Path(log_dir)/f'server_{self.port}.log', 'w+')
        cmd = [str(Path(sys.executable).parent/'dr-serve'), '--model', str(model_dir), '--port', str(self.port),
               '--log_level', 'warning', *map(str, args)]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None: raise RuntimeError(f'dr-serve exited: {self.output()}')
            try:
                if httpx.get(self.url + '/ready', timeout=2).status_code == 200: return
            except httpx.HTTPError: pass
            time.sleep(0.3)
        self.stop(); raise RuntimeError(f'dr-serve not ready in {timeout}s: {self.output()}')

    def output(self) -> str: self.log.flush(); self.log.seek(0); return self.log.read()[-3000:]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try: self.proc.wait(10)
            except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait()
        self.log.close()

@pytest.fixture(scope='module')
def start_server(tmp_path_factory):
    "Start `dr-serve` processes with `start_server(model_dir, *flags)`; all stopped after the module."
    servers = []
    def start(model_dir, *args, **kw):
        servers.append(Server(model_dir, *args, log_dir=tmp_path_factory.mktemp('server'), **kw)); return servers[-1]
    yield start
    for s in servers: s.stop()
# ---- end of the service's fixtures ----

# ---- evaluation fixtures (tests/test_evaluate.py): a stand-in model and run folder ----

def make_standin_model(model_dir, size:int=64, scale:float=1.0, bias:float=0.0, cam_cells:int=8, prep:dict|None=None) -> Path:
    "A tiny ONNX model with the contract's input and outputs (prob, cam) and its model.json, in `model_dir`."
    import onnx
    from onnx import helper as h, TensorProto as TP, numpy_helper as nh
    from dr_detection.infer import ModelMeta
    from dr_detection.preprocess import IMAGENET_STATS
    model_dir = Path(model_dir); model_dir.mkdir(parents=True, exist_ok=True)
    k = max(1, size//cam_cells)   # average pooling to a coarse map, then "red minus green" as the CAM
    inits = [nh.from_array(np.array([[[[1.]], [[-1.]], [[0.]]]], np.float32), 'w'), nh.from_array(np.zeros(1, np.float32), 'b'),
             nh.from_array(np.array([1], np.int64), 'ax1'), nh.from_array(np.array(scale, np.float32), 'scale'),
             nh.from_array(np.array(bias, np.float32), 'bias')]
    nodes = [h.make_node('AveragePool', ['image'], ['pooled'], kernel_shape=[k, k], strides=[k, k]),
             h.make_node('Conv', ['pooled', 'w', 'b'], ['c1']), h.make_node('Squeeze', ['c1', 'ax1'], ['cam']),
             h.make_node('ReduceMean', ['cam'], ['m'], axes=[1, 2], keepdims=0), h.make_node('Mul', ['m', 'scale'], ['ms']),
             h.make_node('Add', ['ms', 'bias'], ['z']), h.make_node('Sigmoid', ['z'], ['prob'])]
    g = h.make_graph(nodes, 'standin', [h.make_tensor_value_info('image', TP.FLOAT, ['N', 3, size, size])],
                     [h.make_tensor_value_info('prob', TP.FLOAT, ['N']), h.make_tensor_value_info('cam', TP.FLOAT, ['N', None, None])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid('', 17)]); m.ir_version = 8
    onnx.checker.check_model(m); onnx.save(m, model_dir/'model.onnx')
    ModelMeta(arch='standin', input_size=size, preprocess=dict(prep or {}, size=size), normalize=IMAGENET_STATS, class_names=['No DR', 'DR'],
              threshold_source='default (not yet evaluated)', quality={}, onnx=dict(cam_shape=[size//k]*2, cam_bias=bias),
              weights={}, training=dict(note='stand-in model for tests: not trained, a fixed red-minus-green read-out'),
              code_version='standin', created=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())).save(model_dir)
    return model_dir

def _standin_image(rng, size, n_lesions) -> np.ndarray:
    "A crude synthetic fundus: an orange disc with noise and `n_lesions` dark red spots."
    yy, xx = np.mgrid[:size, :size]; c = (size-1)/2
    r = np.hypot(yy-c, xx-c)/(0.47*size)
    img = np.zeros((size, size, 3), np.float32)
    disc = r < 1
    img[disc] = np.array([190, 95, 45], np.float32) * (1 - 0.3*r[disc, None]**2)
    img += rng.normal(0, 12, img.shape) * disc[..., None]
    for _ in range(n_lesions):
        ang, rad, s = rng.uniform(0, 2*np.pi), rng.uniform(0, .8)*0.47*size, rng.uniform(.02, .05)*size
        img[(np.hypot(yy-(c+rad*np.sin(ang)), xx-(c+rad*np.cos(ang))) < s) & disc] = [150, 25, 20]
    return np.clip(img, 0, 255).astype(np.uint8)

def make_standin_run(run_dir, n_patients:int=30, size:int=64, seed:int=0) -> Path:
    "A run folder (`preprocessed.csv`, relative paths, and images) with a stand-in model scaled on its train split."
    import pandas as pd
    from dr_detection.data import write_table
    from dr_detection.evaluate import logit, open_model, predict_images
    run_dir = Path(run_dir); (run_dir/'preprocessed').mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed); rows = []
    splits = np.array(['train', 'valid', 'test'])[rng.permutation(np.arange(n_patients) % 3)]
    for i in range(n_patients):
        dr = rng.random() < 0.4
        for eye in ('left', 'right'):
            label = int(dr and rng.random() < 0.8)
            id_ = f'{i}_{eye}'; pth = run_dir/'preprocessed'/f'{id_}.png'
            Image.fromarray(_standin_image(rng, size, int(rng.poisson(6 if label else 1.5)))).save(pth)
            rows.append(dict(id=id_, patient=str(i), eye=eye, grade=4 if label else 0, label=label, excluded='', source='demo',
                             path=str(pth), split=splits[i], eyeq_quality=rng.choice(['0', '1', '']), keep=True, prep_path=str(pth),
                             prep_error=''))
    df = pd.DataFrame(rows).astype({'label': object, 'grade': object})
    df.loc[len(df)] = dict(df.iloc[0], id='x_left', patient='x', label='', grade=1, excluded='grade 1 excluded by label_map')
    for s in ('valid', 'test'):   # a DR eye whose photo the quality check rejected, beside a gradable No-DR eye (screening)
        df.loc[len(df)] = dict(df.iloc[0], id=f'r{s}_left', patient=f'r{s}', eye='left', label=1, grade=4, split=s, keep=False,
                               prep_path='', reject_reason='blurred')
        df.loc[len(df)] = dict(df.iloc[1], id=f'r{s}_right', patient=f'r{s}', eye='right', label=0, grade=0, split=s)
    write_table(df, run_dir, 'preprocessed.csv')
    sess, meta = open_model(make_standin_model(run_dir/'model', size))
    z = logit(predict_images(sess, meta, df[(df.split == 'train') & (df.excluded == '')].prep_path)['prob'])
    s = 1/max(z.std(), 1e-3)
    return make_standin_model(run_dir/'model', size, scale=s, bias=-float(np.median(z))*s + 0.5).parent

@pytest.fixture(scope='session')
def standin_run(tmp_path_factory) -> Path:
    "A stand-in run folder (24 patients, 64 px): relocatable, so tests copy it with `shutil.copytree`."
    return make_standin_run(tmp_path_factory.mktemp('standin'), n_patients=24, size=64)
# ---- end of the evaluation fixtures ----


# ---- the demo run (tests/test_demo.py, test_sources.py, test_calibrate.py) ----
def _usable_demo(run:Path) -> bool:
    "A finished demo run whose model this code can serve (an older pipeline's model.json is refused)."
    from dr_detection.infer import load_meta
    if not (run/'metrics.json').exists(): return False
    try: load_meta(run/'model'); return True
    except (OSError, ValueError): return False

@pytest.fixture(scope='session')
def demo_run(tmp_path_factory) -> Path:
    "A demo run: `$DR_DEMO_RUN`, else a usable runs/demo, else `dr-reproduce configs/demo.yaml` now (about 2 minutes)."
    if os.environ.get('DR_DEMO_RUN'): return Path(os.environ['DR_DEMO_RUN'])
    if _usable_demo(ROOT/'runs'/'demo'): return ROOT/'runs'/'demo'
    out = tmp_path_factory.mktemp('demo')
    cmd = [str(Path(sys.executable).parent/'dr-reproduce'), '--config', str(ROOT/'configs/demo.yaml'), '--out', str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return out
