# dr-detection API: the FastAPI service of nbs/05_serve.ipynb with one model folder baked in.
#   make demo                                    # produces runs/demo/model (the default MODEL)
#   docker build -t dr-detection-api .           # or: --build-arg MODEL=runs/<run>/model
#   docker run -p 8000:8000 dr-detection-api     # then open http://localhost:8000
# Only the serving requirements are installed (settings.ini `requirements`: onnxruntime, FastAPI, Pillow ...):
# no torch, no fastai, no CUDA.

# ---- build stage: check the model folder, install the package into a virtual environment
FROM python:3.11-slim AS build
ARG MODEL=runs/demo/model
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY . /src
RUN set -e; m="/src/${MODEL}"; \
    for f in model.json model.onnx; do \
      if [ ! -f "$m/$f" ]; then \
        echo "ERROR: model folder '${MODEL}' has no $f in the build context." >&2; \
        echo "       Run 'make demo' first (it writes runs/demo/model), or pass --build-arg MODEL=runs/<run>/model." >&2; \
        exit 1; fi; done; \
    mkdir -p /out/run && cp -r "$m" /out/run/model && rm -f /out/run/model/*.safetensors; \
    if [ -f "$m/../metrics.json" ]; then cp "$m/../metrics.json" /out/run/; fi
RUN python -m venv /opt/venv && /opt/venv/bin/pip install /src \
    && /opt/venv/bin/python -c "import importlib.util as u, sys; bad=[m for m in ('torch','fastai','torchvision') if u.find_spec(m)]; sys.exit(f'training packages in the image: {bad}' if bad else 0)"

# ---- final stage: the virtual environment, the model folder, a non-root user
FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin app
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=root:root /out/run /app/run
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    DR_MODEL=/app/run/model DR_HOST=0.0.0.0 DR_PORT=8000
USER app
WORKDIR /app
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request, sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2).status == 200 else 1)"]
CMD ["dr-serve", "--model", "/app/run/model", "--host", "0.0.0.0", "--port", "8000"]
