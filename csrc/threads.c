/* threads.c: the OpenMP thread count, settable at run time so tests can compare 1 and 2 threads. */
#include "femto.h"
#ifdef _OPENMP
#include <omp.h>
#endif

void femto_set_num_threads(int n) {
#ifdef _OPENMP
    omp_set_num_threads(n);
#else
    (void)n;
#endif
}

int femto_get_num_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

int femto_openmp_enabled(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}
