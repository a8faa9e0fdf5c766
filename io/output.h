/*
 * output.h - the one writer of every output file, by one rule (internal).
 *
 * bn_npy_write and the command's safetensors files write through bn_write_output: symbolic
 * links followed; a regular file replaced atomically (temporary file, fsync, rename); a device
 * or a FIFO written in place. Messages as in message.h.
 *
 * Thread safety: distinct outputs may be written concurrently. bn_remove_output_temporary knows
 * only the latest write in progress (it is meant for a command that writes one at a time).
 */
#ifndef BN_IO_OUTPUT_H
#define BN_IO_OUTPUT_H

#include "bnorm.h"

#include <stddef.h>

/*
 * Writes header[0 .. hlen-1] then data[0 .. nbytes-1] to path: the one writer of every output
 * (bn_npy_write, the command's safetensors files), by one rule.
 *   - Symbolic links are followed to the file they lead to (a relative target is taken from its
 *     link's directory), which is then written by the rules below; the links stay links. A
 *     link that is not there yet (dangling) is followed too: the file it names is created. In a
 *     sticky directory anyone may write to (/tmp), only a link owned by this user or by the
 *     directory's owner is followed, as Linux's fs.protected_symlinks would have it.
 *   - A regular file, or nothing yet, is replaced atomically: the bytes go to a new temporary
 *     file "<dir>/.<name>.bnorm-tmp.XXXXXX" in the file's own directory (<name> cut short, at a
 *     UTF-8 character boundary, to keep the whole within NAME_MAX = 255 bytes; XXXXXX six
 *     random letters and digits), which is flushed, fsync'ed and closed, every step checked,
 *     then renamed over the file, and the directory fsync'ed. On any failure the temporary file
 *     is removed and the existing file is left exactly as it was. A file replaced keeps its
 *     permission bits and, where this process may give it away (root), its owner and group; a
 *     new file gets 0666 less the umask.
 *   - A device (/dev/full, /dev/null) or a FIFO is written in place, never replaced (renaming
 *     over it would replace the node); write errors are still caught. A FIFO is opened with
 *     O_NONBLOCK, so that one no process is reading fails at once (ENXIO) instead of waiting.
 *     A link that names an open file rather than a path (Linux's /proc/PID/fd/N, where
 *     /dev/stdout leads) is written through in place too, a regular file there truncated first.
 *   - A directory, or a link to one, is an error (EISDIR); so is an empty path.
 * @return BN_OK; BN_ERR_IO (err says why); BN_ERR_NULL_POINTER; BN_ERR_TOO_LARGE (no memory).
 */
bn_status bn_write_output(const char *path, const char *header, size_t hlen, const void *data,
                          size_t nbytes, char *err, size_t errlen);

/*
 * Looks for a temporary file that bn_write_output left for path (it was killed, SIGKILL being
 * the one signal it cannot clean up after): a name "<dir>/.<name>.bnorm-tmp.XXXXXX" beside the
 * file path leads to. It is not removed: another process may be writing path right now. On a
 * hit its path goes to found (truncated to foundlen, NUL-terminated; found may be NULL).
 * @return 1 when there is one, 0 when there is none or the directory cannot be read.
 */
int bn_find_stale_temporary(const char *path, char *found, size_t foundlen);

/*
 * Removes the temporary file bn_write_output is writing, if any: for a signal handler, so that a
 * command interrupted while writing leaves no temporary file behind. Async-signal-safe (an
 * atomic load and unlink). It knows one file: the latest write in progress.
 */
void bn_remove_output_temporary(void);

#endif /* BN_IO_OUTPUT_H */
