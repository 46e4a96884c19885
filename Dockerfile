# Continuity: multi-stage build on the current Node.js LTS slim image, run as a non-root user.
#   docker build -t continuity .
#   docker run -v $PWD/config:/app/config -v $PWD/probes:/app/probes -v $PWD/runbooks:/app/runbooks \
#              -v continuity-var:/app/var -p 9464:9464 continuity
# In a container, set `daemon.listen: 0.0.0.0:9464` in the mounted config so Prometheus can scrape
# it, and `daemon.redis_url` to a Redis set for production (config/docker-compose.example.yaml).
# Node.js 26 is the Active LTS line (since 2026-10-28; Debian trixie); override with --build-arg NODE_IMAGE=...
ARG NODE_IMAGE=node:26-slim

# Build: compile src/ to dist/ with the dev dependencies (TypeScript).
FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
# tsc -p tsconfig.build.json into dist/ (the build script also copies the web console's files).
RUN npm run build

# Runtime: the compiled dist/, the production dependencies only, and the clients probes and
# runbook steps call: ping (icmp probes), ssh, psql/pg_dump/pg_restore, mariadb/mysql.
FROM ${NODE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates tini iputils-ping openssh-client postgresql-client mariadb-client \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
ENV NODE_ENV=production
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force
COPY --from=build /app/dist ./dist
# bin/continuity.js runs dist/cli.js when there is no src/ (as here).
COPY bin ./bin
# Defaults for the volumes below: a mounted folder replaces them. Only the config file itself from
# config/: nothing else there is read at run time, and config/secrets/ must never enter an image.
COPY config/continuity.yaml ./config/continuity.yaml
COPY probes ./probes
COPY runbooks ./runbooks
RUN mkdir -p /app/var && chown node:node /app/var
# node (uid 1000): numeric, so runAsNonRoot can verify it.
USER 1000:1000
# config, probes and runbooks are read (mount them read-only); var is the state dir (daemon.state_dir: ../var).
VOLUME ["/app/config", "/app/probes", "/app/runbooks", "/app/var"]
EXPOSE 9464
# Where the health check asks: change it with daemon.listen's port.
ENV CONTINUITY_HEALTH_URL=http://127.0.0.1:9464/healthz
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["node", "-e", "fetch(process.env.CONTINUITY_HEALTH_URL).then(r => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
ENTRYPOINT ["tini", "--", "node", "bin/continuity.js"]
CMD ["daemon", "-c", "config/continuity.yaml"]
