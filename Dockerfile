# One image for the API and the worker (the command picks which).
#   docker build -t qaas .
#   docker run qaas qaas serve --host 0.0.0.0          # embedded default, one container
#   docker compose up                                  # api + worker + postgres + redis
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    QAAS_DATA_DIR=/data

WORKDIR /app

# torch first, from the CPU index: a plain `pip install torch` pulls a multi-GB CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

# Dependencies before the source, so a code change does not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir -p app worker qaas_engine qaas \
    && touch app/__init__.py worker/__init__.py qaas_engine/__init__.py qaas/__init__.py \
    && pip install . \
    && pip uninstall -y qaas-service \
    && rm -rf app worker qaas_engine qaas

# A regular (not editable) install: the migrations travel inside the package (app/migrations),
# so the image runs what a wheel user runs. alembic.ini stays in WORKDIR for `alembic upgrade
# head` (it names the migrations as app:migrations, found in site-packages).
COPY app ./app
COPY worker ./worker
COPY qaas_engine ./qaas_engine
COPY qaas ./qaas
COPY alembic.ini ./
RUN pip install --no-deps . \
    && rm -rf app worker qaas_engine qaas build \
    && useradd --create-home --uid 10001 qaas \
    && mkdir -p /data /shared \
    && chown qaas:qaas /data /shared

USER qaas
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"

CMD ["qaas", "serve", "--host", "0.0.0.0", "--port", "8000"]
