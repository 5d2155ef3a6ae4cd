"Shared helpers of the tests/test_serve*.py files: a model folder, photos and bad inputs, a real uvicorn process."
import functools, io, json, os, shutil, socket, subprocess, sys, tempfile, time, atexit
from pathlib import Path
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get('DR_DATA', ROOT.parent/'shared'/'data'))
TMP = Path(tempfile.mkdtemp(prefix='dr_serve_tests_'))
atexit.register(shutil.rmtree, TMP, ignore_errors=True)

@functools.cache
def model_run(size:int=64) -> Path:
    "A run folder with model/ made by 03_train's own `save_model` (an untrained resnet18: real model.json and ONNX graph) and a metrics.json."
    from dr_detection.data import load_config
    from dr_detection.train import build_model, save_model
    run = TMP/f'run{size}'
    cfg = load_config(None, overrides={'train.arch': 'resnet18', 'preprocess.size': size})
    save_model(build_model('resnet18', pretrained=False), cfg, run/'model')
    (run/'metrics.json').write_text(json.dumps({'test': {'auc': 0.5, 'n': 10}, 'note': 'made by tests/serve_support.py'}))
    return run

def jpeg(img:Image.Image, **kw) -> bytes:
    b = io.BytesIO(); img.convert('RGB').save(b, 'JPEG', **kw); return b.getvalue()

@functools.cache
def retina() -> Image.Image:
    "A real colour fundus photograph (scikit-image's sample, 1411x1411)."
    from skimage import data
    return Image.fromarray(data.retina())

@functools.cache
def photos() -> dict:
    "Valid uploads: the sample retina at two sizes, as JPEG and PNG, and a dark (ungradable) one."
    r = retina()
    small = r.resize((512, 512))
    b = io.BytesIO(); small.save(b, 'PNG')
    dark = Image.fromarray((np.asarray(small) * 0.05).astype(np.uint8))
    return {'retina.jpeg': jpeg(r, quality=90), 'small.jpeg': jpeg(small, quality=90), 'small.png': b.getvalue(), 'dark.jpeg': jpeg(dark)}

@functools.cache
def bad_inputs() -> dict:
    "name -> (bytes, expected status) for every kind of bad file the issue lists (the upload limit is tested separately)."
    good = photos()['retina.jpeg']
    gif = io.BytesIO(); retina().resize((64, 64)).save(gif, 'GIF')
    bomb = io.BytesIO(); Image.new('L', (10000, 8000)).save(bomb, 'PNG')  # 80 MP in ~100 kB
    return {'zero-byte': (b'', 400), 'truncated JPEG': (good[:len(good)//2], 422),
            'non-image': (b'%PDF-1.4\n' + os.urandom(2000), 415), 'unsupported format (GIF)': (gif.getvalue(), 415),
            'decompression bomb': (bomb.getvalue(), 413)}

def real_photo() -> tuple[str, bytes]:
    "A real EyePACS photo from ../shared/data when present (never copied anywhere), else the scikit-image retina."
    d = SHARED/'eyepacs-1024'/'train'
    if d.is_dir():
        for p in sorted(d.glob('*.jpeg'))[:1]: return p.name, p.read_bytes()
    return 'retina.jpeg', photos()['retina.jpeg']

def free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def rss_mb(pid:int) -> float:
    "Resident memory of process `pid` in MB (from /proc)."
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('VmRSS:'): return int(line.split()[1]) / 1024
    raise RuntimeError('no VmRSS')

class Server:
    "`dr-serve` in a subprocess on 127.0.0.1 (a real uvicorn), stopped on exit."
    def __init__(self, model_dir, *args, env=None, timeout=90):
        self.port = free_port(); self.url = f'http://127.0.0.1:{self.port}'
        self.log = open(TMP/f'server_{self.port}.log', 'w+')
        cmd = [sys.executable, '-c', 'from dr_detection.serve import main; main()', '--model', str(model_dir),
               '--port', str(self.port), '--log-level', 'warning', *map(str, args)]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        import httpx
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
