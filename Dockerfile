# tkestack/tke-anp-tunnel: tunnel-server, tunnel-agent, tunnel-client and tunnel-pki on Node 20.
#   docker build -t tkestack/tke-anp-tunnel:0.1.0 .
#   docker run --rm tkestack/tke-anp-tunnel:0.1.0 tunnel-server --help

FROM node:20-bookworm-slim AS build
WORKDIR /src
# Dependencies first, so that a change of the sources reuses this layer. The package's own
# prepare script (the build) needs the sources, so it runs below instead.
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts
# npm run build: the protocol code generated from proto/ (buf and protoc-gen-ts, both from
# node_modules), then tsc, then the executable bit on dist/bin.
COPY tsconfig.json tsconfig.build.json buf.gen.yaml ./
COPY scripts ./scripts
COPY proto ./proto
COPY lib ./lib
COPY bin ./bin
RUN npm run build && find dist -name '*.map' -delete

FROM node:20-bookworm-slim
ENV NODE_ENV=production \
    TUNNEL_STATE_DIR=/var/lib/tunnel \
    NODE_OPTIONS=--max-semi-space-size=4
WORKDIR /app
# Runtime dependencies only, optional ones (koffi, for malloc_trim) included; no scripts, as
# the package's prepare script would build it again without its dev dependencies.
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts && npm cache clean --force
COPY --from=build /src/dist/lib ./dist/lib
COPY --from=build /src/dist/bin ./dist/bin
COPY proto ./proto
RUN ln -s /app/dist/bin/tunnel-server.js /usr/local/bin/tunnel-server \
 && ln -s /app/dist/bin/tunnel-agent.js /usr/local/bin/tunnel-agent \
 && ln -s /app/dist/bin/tunnel-client.js /usr/local/bin/tunnel-client \
 && ln -s /app/dist/bin/tunnel-pki.js /usr/local/bin/tunnel-pki \
 && mkdir -p /var/lib/tunnel /run/tunnel \
 && chown 65532:65532 /var/lib/tunnel /run/tunnel
USER 65532:65532
EXPOSE 10261 10262 10263 8092 8093
# No entrypoint: the command names the binary (the base image's entrypoint is a shell script).
ENTRYPOINT []
CMD ["tunnel-server"]
