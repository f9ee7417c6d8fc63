/* AMX tiles, shared by the C modules (_decoderkernel.c: bfloat16 products; _stepkernel.c: int8 products).
 *
 * Built on x86-64 Linux with GCC >= 11 or Clang >= 12 (HAVE_AMX); used where the CPU has the tiles and the
 * product instructions a module needs and Linux grants this process the tiles' state, which is opt-in per process
 * (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)). Every tile is configured the same way: palette 1, 16 rows
 * of 64 bytes. A function that uses tiles loads this configuration first and releases the tiles at its end (their
 * state belongs to the calling thread).
 */
#ifndef HVQ_AMX_H
#define HVQ_AMX_H

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__) && \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11))
#define HAVE_AMX 1
#include <cpuid.h>
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define AMX_FEATURE_BF16 22 /* bits of cpuid(7, 0).EDX */
#define AMX_FEATURE_INT8 25

__attribute__((target("amx-tile"))) static void configure_tiles(void) {
    struct {
        uint8_t palette, start_row, reserved[14];
        uint16_t bytes_per_row[16];
        uint8_t rows[16];
    } __attribute__((aligned(64))) config;
    memset(&config, 0, sizeof config);
    config.palette = 1;
    for (int t = 0; t < 8; t++) {
        config.bytes_per_row[t] = 64;
        config.rows[t] = 16;
    }
    /* Not _tile_loadconfig: GCC's takes the configuration as an 8-byte memory operand, so the compiler may drop the
     * stores to the rest of it as dead (it did here); this operand is all 64 bytes. */
    __asm__ volatile("ldtilecfg %0" ::"m"(config));
}

/* Whether the CPU has AMX tiles with the product instructions of `feature` (AMX_FEATURE_*) and Linux lets this
 * process use them (asking for them the first time; asking again is harmless). */
static int amx_tiles_permitted(int feature) {
    unsigned int eax, ebx, ecx, edx;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) || !(edx >> 24 & 1) || !(edx >> feature & 1)) return 0;
    return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
}
#endif

#endif /* HVQ_AMX_H */
