#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <rte_cycles.h>
#include <rte_lcore.h>
#include <rte_errno.h>

#include "shim.h"

uint16_t qosgw_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{
	return rte_eth_rx_burst(port, queue, pkts, n);
}

uint16_t qosgw_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{
	return rte_eth_tx_burst(port, queue, pkts, n);
}

struct rte_mbuf *qosgw_pktmbuf_alloc(struct rte_mempool *mp)
{
	return rte_pktmbuf_alloc(mp);
}

void qosgw_pktmbuf_free(struct rte_mbuf *m)
{
	rte_pktmbuf_free(m);
}

char *qosgw_pktmbuf_append(struct rte_mbuf *m, uint16_t len)
{
	return rte_pktmbuf_append(m, len);
}

uint64_t qosgw_rdtsc(void)
{
	return rte_rdtsc();
}

unsigned qosgw_lcore_id(void)
{
	return rte_lcore_id();
}

int qosgw_errno(void)
{
	return rte_errno;
}

int qosgw_lcore_cpus(uint64_t *mask, unsigned words)
{
	unsigned lcore, cpu;

	for (cpu = 0; cpu < words; cpu++)
		mask[cpu] = 0;
	RTE_LCORE_FOREACH(lcore) {
		rte_cpuset_t set = rte_lcore_cpuset(lcore);

		for (cpu = 0; cpu < CPU_SETSIZE; cpu++) {
			if (!CPU_ISSET(cpu, &set))
				continue;
			if (cpu / 64 >= words)
				return -1;
			mask[cpu / 64] |= UINT64_C(1) << (cpu % 64);
		}
	}
	return 0;
}
