# One image for every jetsaga process: the three workers (`jetsaga worker order|payment|
# inventory`), the one-shot `jetsaga setup`, and localstripe for development. compose.dev.yaml
# picks the process with `command:`.

# Build stage: turn the source into a wheel, so the runtime image carries no source tree.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY jetsaga ./jetsaga
COPY order_service ./order_service
COPY inventory_service ./inventory_service
COPY payment_service ./payment_service
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
# Dependencies come as wheels from PyPI; nothing here needs a compiler.
RUN pip install /wheels/*.whl \
    && rm -rf /wheels \
    && useradd --system --create-home --uid 10001 --user-group jetsaga
USER jetsaga
WORKDIR /home/jetsaga
# Inside a container the services must listen on every interface to be reachable; the
# default of the code is 127.0.0.1.
ENV HTTP_HOST=0.0.0.0
# order, payment, inventory, localstripe
EXPOSE 3004 3005 3006 8420
CMD ["jetsaga", "worker", "order"]
