// SPDX-License-Identifier: GPL-2.0
/*
 * p2pdma_ram: publish the RAM behind QEMU's ivshmem-plain device as p2pmem.
 *
 * Part of the p2pdma lab (lab/kernel/p2pdma-ram in the p2pdma repository); `p2pdma lab
 * kernel` copies this file into drivers/pci/ of the tree it builds. In the lab, an NVMe
 * Controller Memory Buffer is an MMIO region that QEMU serves a few bytes per callback,
 * so peer-to-peer DMA into it is slow. QEMU's ivshmem-plain device (1af4:1110) exposes a
 * memory-backend-ram object as BAR 2: DMA into it is a memory copy. This driver hands
 * that whole BAR to the kernel's p2pdma core and publishes it, so it shows up in
 * /sys/bus/pci/devices/<BDF>/p2pmem/ like any other provider.
 *
 * ivshmem-doorbell has the same vendor, device, class and revision, but its memory is
 * shared with other guests through a server and must not become anyone's DMA buffer.
 * QEMU always gives the doorbell variant an MSI-X table in its own BAR 1 (at least one
 * vector); ivshmem-plain has no BAR 1 and no MSI-X. Probe refuses any 1af4:1110 function
 * with either.
 *
 * There is no remove callback on purpose: pci_p2pdma_add_resource() registers all its
 * teardown with devres on the device, so unbind and hot removal run the p2pdma core's own
 * release path (the allocate file goes away and user mappings are zapped, the pagemap is
 * killed and waited for, then the pool is destroyed), and pcim_enable_device() disables
 * the device after that.
 */

#include <linux/module.h>
#include <linux/pci.h>
#include <linux/pci-p2pdma.h>

#define P2PDMA_RAM_VENDOR	0x1af4	/* Red Hat, Inc. (Qumranet) */
#define P2PDMA_RAM_DEVICE	0x1110	/* Inter-VM shared memory */
#define P2PDMA_RAM_REG_BAR	0	/* 256 bytes of registers */
#define P2PDMA_RAM_MSIX_BAR	1	/* ivshmem-doorbell only */
#define P2PDMA_RAM_MEM_BAR	2	/* the memory backend */

static int p2pdma_ram_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	int err;

	if (pci_find_capability(pdev, PCI_CAP_ID_MSIX) ||
	    pci_resource_len(pdev, P2PDMA_RAM_MSIX_BAR)) {
		pci_info(pdev, "ivshmem with interrupts (ivshmem-doorbell): shared with other guests, not used as p2pmem\n");
		return -ENODEV;
	}
	if (!(pci_resource_flags(pdev, P2PDMA_RAM_MEM_BAR) & IORESOURCE_MEM) ||
	    !pci_resource_len(pdev, P2PDMA_RAM_MEM_BAR)) {
		pci_err(pdev, "BAR %d is not a memory BAR\n", P2PDMA_RAM_MEM_BAR);
		return -ENODEV;
	}

	err = pcim_enable_device(pdev);
	if (err) {
		pci_err(pdev, "cannot enable the device: %d\n", err);
		return err;
	}

	err = pci_p2pdma_add_resource(pdev, P2PDMA_RAM_MEM_BAR, 0, 0);
	if (err) {
		pci_err(pdev, "cannot add BAR %d as p2pmem: %d\n",
			P2PDMA_RAM_MEM_BAR, err);
		return err;
	}
	pci_p2pmem_publish(pdev, true);
	pci_info(pdev, "%llu MiB of RAM published as p2pmem\n",
		 (unsigned long long)pci_resource_len(pdev, P2PDMA_RAM_MEM_BAR) >> 20);
	return 0;
}

static const struct pci_device_id p2pdma_ram_ids[] = {
	{ PCI_DEVICE(P2PDMA_RAM_VENDOR, P2PDMA_RAM_DEVICE) },
	{ }
};
MODULE_DEVICE_TABLE(pci, p2pdma_ram_ids);

static struct pci_driver p2pdma_ram_driver = {
	.name		= "p2pdma_ram",
	.id_table	= p2pdma_ram_ids,
	.probe		= p2pdma_ram_probe,
};
module_pci_driver(p2pdma_ram_driver);

MODULE_DESCRIPTION("p2pdma lab: QEMU ivshmem-plain RAM as a p2pmem provider");
MODULE_LICENSE("GPL");
