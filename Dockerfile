# The mes-events image (relay, migrate, provision, …): built here, run as a non-root user on a
# distroless base that has only what the static-ish binary needs (glibc, libgcc).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The commit `mes-events --version` names (.git stays out of the build context):
# docker build --build-arg MES_BUILD_COMMIT=$(git rev-parse --short=12 HEAD) .
ARG MES_BUILD_COMMIT=unknown
RUN MES_BUILD_COMMIT=$MES_BUILD_COMMIT cargo build --release --locked --bin mes-events

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/mes-events /usr/local/bin/mes-events
# The shipped declaration, so `provision` works without a mount (mount your own over it).
COPY nats /etc/mes-events/nats
USER nonroot
ENTRYPOINT ["/usr/local/bin/mes-events"]
CMD ["relay"]
