/* ephemeral.h - disk-backed /tmp for sandboxes (Lambda's ephemeral storage).
 *
 * Each sandbox gets a private ext4 filesystem of exactly its
 * EphemeralStorage size: a sparse image file under
 * <state_dir>/ephemeral/<instance>/ (instance = "sbx-<pid>-<starttime>" of
 * the worker), attached to a loop device (LOOP_CONFIGURE with
 * LO_FLAGS_AUTOCLEAR) and mounted with the new mount API as a *detached*
 * mount (fsopen/fsconfig/fsmount): nothing appears in the host's mount
 * table; the sandbox's setup child moves it to /tmp (move_mount) in its own
 * mount namespace, so the filesystem lives exactly as long as that
 * namespace and the loop device detaches itself when it goes.  Its page
 * cache is ordinary (reclaimable) file cache, not tmpfs memory.
 *
 * A background thread keeps a small pool of ready images per size (512 MB
 * always, plus sizes recently asked for): formatted by mke2fs (e2fsprogs),
 * attached, mounted detached, root emptied (no lost+found) and 01777, so
 * ephemeral_acquire only pops one and sets its root's owner.  An image is
 * used by one sandbox and deleted with it: never reused.
 *
 * Thread-safe.  Everything runs in the worker (host root). */
#ifndef FLICKER_EPHEMERAL_H
#define FLICKER_EPHEMERAL_H
#include <stdbool.h>
#include <sys/types.h>
#include "common/err.h"

/* One sandbox's /tmp while the sandbox lives. */
typedef struct ephemeral {
    char *image;   /* image file path (deleted by ephemeral_release) */
    int mount_fd;  /* detached mount (fsmount), -1 once handed over */
    int loop_nr;   /* /dev/loop<N> */
    dev_t dev;     /* the image's st_dev/st_ino: identifies our loop binding */
    ino_t ino;
} ephemeral_t;

/* Sets up <state_dir>/ephemeral/<instance>, removes what dead instances left
 * there (mounts of their images in our namespace, loop devices bound to
 * them, the files), and starts the pool thread.  Returns 1 when disk-backed
 * /tmp is available, 0 when it is not (no /dev/loop-control, no mke2fs, no
 * ext4 or no new mount API: the caller falls back to tmpfs; the reason is
 * logged), -1/err on a real error (state dir unusable). */
int ephemeral_init(const char *state_dir, const char *instance, err_t *err);
/* Stops the pool thread, deletes the pool's images and our instance dir. */
void ephemeral_shutdown(void);
bool ephemeral_enabled(void);

/* Takes an image of size_mb MiB (<= 0: 512) from the pool, or, when the
 * pool has none, prepares one now (format, attach to a free loop device,
 * mount detached nosuid,nodev, root empty with mode 01777: ~10-30 ms), and
 * makes its root owned by uid:gid.  On success e->mount_fd is the mount to
 * move into place.  On failure nothing is left behind. */
int ephemeral_acquire(int size_mb, uid_t uid, gid_t gid, ephemeral_t *e, err_t *err);
/* Closes e->mount_fd (call once the sandbox holds the mount, or on failure
 * before that). */
void ephemeral_drop_mount(ephemeral_t *e);
/* After the sandbox's mount namespace is gone: waits (briefly) for the loop
 * device to detach itself, detaches it if not, and deletes the image.
 * Returns 0 or -1/err; e is emptied either way. */
int ephemeral_release(ephemeral_t *e, err_t *err);
#endif
