/* version.h - the release version, reported by `flicker version` and status. */
#ifndef FLICKER_VERSION_H
#define FLICKER_VERSION_H
#define FLICKER_VERSION "0.1.0"
#endif
