# Tally's roles for docker-compose.yml: one image, the role is the command.
FROM node:20-bookworm-slim
WORKDIR /app
COPY package.json package-lock.json tsconfig.json tsconfig.build.json ./
COPY bin ./bin
COPY app ./app
COPY core ./core
COPY ingest ./ingest
COPY stream ./stream
COPY batch ./batch
COPY query ./query
COPY schemas ./schemas
COPY bench ./bench
RUN npm ci && npm prune --omit=dev
ENV HOST=0.0.0.0 NODE_ENV=production
ENTRYPOINT ["node", "bin/tally.js"]
