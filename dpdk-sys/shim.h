/* DPDK's hot-path functions are static inline in its headers, so no symbol exists to link
 * against. These one-line wrappers give them a symbol; shim.c is compiled with all of
 * `pkg-config --cflags libdpdk` so the inlined intrinsics match the library build. */
#ifndef QOSGW_DPDK_SHIM_H
#define QOSGW_DPDK_SHIM_H

#include <stdint.h>

struct rte_mbuf;
struct rte_mempool;

uint16_t qosgw_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
uint16_t qosgw_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
struct rte_mbuf *qosgw_pktmbuf_alloc(struct rte_mempool *mp);
void qosgw_pktmbuf_free(struct rte_mbuf *m);
char *qosgw_pktmbuf_append(struct rte_mbuf *m, uint16_t len);
uint64_t qosgw_rdtsc(void);
unsigned qosgw_lcore_id(void);
int qosgw_errno(void);
/* The CPUs of every enabled lcore (the main one included) as a bit mask of `words` 64-bit
 * words, CPU c being bit c % 64 of word c / 64 (rte_lcore_cpuset needs cpu_set_t, which
 * bindgen does not see). Returns 0, or -1 if an lcore's CPU does not fit in the mask. */
int qosgw_lcore_cpus(uint64_t *mask, unsigned words);

#endif
