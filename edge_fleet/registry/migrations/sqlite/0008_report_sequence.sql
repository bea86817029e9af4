-- Reports ordered by the agent's series, not its clock (edge_agent/ota/report_order.py): the boot id and
-- sequence number of the device's latest stored report (NULL from agents that send none).
ALTER TABLE devices ADD COLUMN reported_boot_id TEXT;
ALTER TABLE devices ADD COLUMN reported_seq INTEGER;
