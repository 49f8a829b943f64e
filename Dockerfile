FROM python:3.12-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 DJANGO_STATIC_ROOT=/app/static
WORKDIR /app
# run-code's sandbox: bubblewrap, and the interpreters user code runs with (Debian's own,
# under /usr, separate from the application's Python).
RUN apt-get update \
    && apt-get install -y --no-install-recommends bubblewrap python3 nodejs \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md ./
COPY scheduler_project ./scheduler_project
COPY tasks_app ./tasks_app
COPY executors ./executors
COPY manage.py Procfile gunicorn.conf.py ./
RUN pip install --no-cache-dir . \
    && SCHEDULER_DATA_DIR=/tmp/build python manage.py collectstatic --noinput \
    && rm -rf /tmp/build && useradd --create-home app && mkdir -p /data && chown app /data
USER app
EXPOSE 8000 5555
CMD ["gunicorn", "scheduler_project.wsgi", "--bind", "0.0.0.0:8000"]
