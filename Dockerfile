# dr-detection API: the FastAPI service of nbs/05_serve.ipynb with one model folder baked in.
#   make demo                                    # writes runs/demo/model, the default MODEL
#   docker build -t dr-detection-api .           # or: docker build --build-arg MODEL=runs/<run>/model -t dr-detection-api .
#   docker run -p 8000:8000 dr-detection-api     # then open http://localhost:8000
# Only the serving requirements of settings.ini (`requirements`: onnxruntime, FastAPI, Pillow, ...) are installed:
# no torch, no fastai, no CUDA (those are the `train` extra). Settings: -e DR_MAX_UPLOAD_MB=20 -e DR_CONCURRENCY=... etc.
# Memory: a request decodes at most 6 bytes a pixel of the 25-MP limit (DR_MAX_PIXELS), so it adds at most ~150 MB
# (measured, 25 MP: JPEG +3-16 MB, progressive JPEG +72, PNG +100, TIFF +105, 16-bit PNG see issue 14's note), and
# at most DR_CONCURRENCY requests decode at once (the others wait, DR_MAX_QUEUE of them, holding only their upload).
# A container needs about  idle (~250 MB with the demo model) + DR_CONCURRENCY x 150 MB (measured with 2N TIFFs of
# 25 MP sent at once: peak 341 / 449 / 671 MB for DR_CONCURRENCY 1 / 2 / 4, i.e. 230 + ~110 MB each):
#   docker run --memory=768m -e DR_CONCURRENCY=3 ...      (DR_CONCURRENCY defaults to the number of cores: set it)

# ---- 1. the package and its serving requirements, in a virtual environment (cached until the sources change)
FROM python:3.11-slim AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY settings.ini setup.py pyproject.toml MANIFEST.in README.md /src/
COPY dr_detection /src/dr_detection
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --quiet /src \
 && /opt/venv/bin/pip uninstall --yes --quiet pip setuptools \
 && cd /opt/venv/lib/python3.11/site-packages \
 && rm -rf scipy/*/tests scipy/*/*/tests numpy/tests numpy/*/tests onnxruntime/transformers onnxruntime/quantization swagger_ui_bundle/vendor/*/*.map \
 && /opt/venv/bin/python -c "import importlib.util as u, sys; bad = [m for m in ('torch', 'torchvision', 'fastai', 'pandas', 'matplotlib') if u.find_spec(m)]; sys.exit(f'training packages in the image: {bad}' if bad else 0)" \
 && /opt/venv/bin/python -c "import dr_detection.serve"

# ---- 2. the model folder named by MODEL (a missing one stops the build here, with what to do)
FROM python:3.11-slim AS model
ARG MODEL=runs/demo/model
COPY . /ctx
RUN set -e; m="/ctx/${MODEL}"; \
    for f in model.json model.onnx; do if [ ! -f "$m/$f" ]; then \
      echo "ERROR: no model folder at '${MODEL}' in the build context (missing $f)." >&2; \
      echo "       Run 'make demo' first (it writes runs/demo/model), or pass --build-arg MODEL=runs/<run>/model." >&2; \
      exit 1; fi; done; \
    mkdir -p /out/run && cp -r "$m" /out/run/model && rm -f /out/run/model/*.safetensors; \
    if [ -f "$m/../metrics.json" ]; then cp "$m/../metrics.json" /out/run/; fi

# ---- 3. the image: virtual environment + model folder, run as a non-root user
FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin app
COPY --from=deps /opt/venv /opt/venv
COPY --from=model /out/run /app/run
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 DR_MODEL=/app/run/model
USER app
WORKDIR /app
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"]
CMD ["dr-serve", "--model", "/app/run/model", "--host", "0.0.0.0", "--port", "8000"]
