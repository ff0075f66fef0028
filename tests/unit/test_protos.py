"""The committed stubs match protos/, and our Felix messages keep Felix's field numbers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from libcalico.api.felix import felixbackend_pb2 as fb

ROOT = Path(__file__).resolve().parents[2]


def test_generated_stubs_are_not_stale() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# Written from shared/reference/calico.md §1 (Felix's felixbackend.proto, Calico v3.33), not from
# our .proto: a renumbering on our side fails here.
FELIX_FIELDS: dict[str, dict[str, int]] = {
    "ToDataplane": {
        "sequence_number": 15, "in_sync": 1, "ipset_update": 2, "ipset_delta_update": 3,
        "ipset_remove": 4, "active_profile_update": 5, "active_profile_remove": 6,
        "active_policy_update": 7, "active_policy_remove": 8, "host_endpoint_update": 9,
        "host_endpoint_remove": 10, "workload_endpoint_update": 11,
        "workload_endpoint_remove": 12, "config_update": 13, "host_metadata_update": 14,
        "host_metadata_remove": 18, "ipam_pool_update": 16, "ipam_pool_remove": 17,
        "service_account_update": 19, "service_account_remove": 20, "namespace_update": 21,
        "namespace_remove": 22, "route_update": 23, "route_remove": 24, "vtep_update": 25,
        "vtep_remove": 26, "wireguard_endpoint_update": 27, "wireguard_endpoint_remove": 28,
        "global_bgp_config_update": 29, "encapsulation": 30, "service_update": 31,
        "service_remove": 32, "wireguard_endpoint_v6_update": 33,
        "wireguard_endpoint_v6_remove": 34,
    },
    "FromDataplane": {
        "sequence_number": 8, "process_status_update": 3, "host_endpoint_status_update": 4,
        "host_endpoint_status_remove": 5, "workload_endpoint_status_update": 6,
        "workload_endpoint_status_remove": 7, "wireguard_status_update": 9,
        "dataplane_in_sync": 10,
    },
    "IPSetUpdate": {"id": 1, "members": 2, "type": 3},
    "IPSetDeltaUpdate": {"id": 1, "added_members": 2, "removed_members": 3},
    "IPSetRemove": {"id": 1},
    "ActiveProfileUpdate": {"id": 1, "profile": 2},
    "ProfileID": {"name": 1},
    "Profile": {"inbound_rules": 1, "outbound_rules": 2},
    "ActivePolicyUpdate": {"id": 1, "policy": 2},
    "PolicyID": {"name": 2, "namespace": 3, "kind": 4},
    "Policy": {
        "inbound_rules": 1, "outbound_rules": 2, "untracked": 3, "pre_dnat": 4, "namespace": 5,
        "original_selector": 6, "perf_hints": 7, "tier": 8,
    },
    "HostEndpointUpdate": {"id": 1, "endpoint": 3},
    "HostEndpointID": {"endpoint_id": 2},
    "HostEndpoint": {
        "name": 1, "profile_ids": 2, "tiers": 3, "untracked_tiers": 6, "pre_dnat_tiers": 7,
        "forward_tiers": 8, "expected_ipv4_addrs": 4, "expected_ipv6_addrs": 5,
    },
    "WorkloadEndpointUpdate": {"id": 1, "endpoint": 5},
    "WorkloadEndpointID": {"orchestrator_id": 2, "workload_id": 3, "endpoint_id": 4},
    "WorkloadEndpoint": {
        "state": 1, "name": 2, "mac": 3, "profile_ids": 4, "ipv4_nets": 5, "ipv6_nets": 6,
        "tiers": 7, "ipv4_nat": 8, "ipv6_nat": 9, "allow_spoofed_source_prefixes": 10,
        "annotations": 11,
    },
    "TierInfo": {"name": 1, "ingress_policies": 2, "egress_policies": 3, "default_action": 4},
    "NatInfo": {"ext_ip": 1, "int_ip": 2},
    "ConfigUpdate": {"config": 1, "source_to_raw_config": 2, "message": 3},
    "HostMetadataUpdate": {
        "hostname": 1, "ipv4_addr": 2, "ipv6_addr": 3, "asnumber": 4, "labels": 5,
    },
    "HostMetadataRemove": {"hostname": 1, "ipv4_addr": 2},
    "IPAMPoolUpdate": {"id": 1, "pool": 2},
    "IPAMPool": {
        "cidr": 1, "masquerade": 2, "ipip_mode": 3, "vxlan_mode": 4, "allowed_uses": 5,
    },
    "ServiceAccountID": {"namespace": 1, "name": 2},
    "ServiceAccountUpdate": {"id": 1, "labels": 2},
    "NamespaceID": {"name": 1},
    "NamespaceUpdate": {"id": 1, "labels": 2},
    "RouteUpdate": {
        "types": 12, "ip_pool_type": 2, "dst": 3, "dst_node_name": 4, "dst_node_ip": 5,
        "same_subnet": 7, "nat_outgoing": 8, "local_workload": 9, "tunnel_type": 10,
        "borrowed": 11,
    },
    "RouteRemove": {"dst": 2},
    "VXLANTunnelEndpointUpdate": {
        "node": 1, "mac": 2, "ipv4_addr": 3, "parent_device_ip": 4, "mac_v6": 5,
        "ipv6_addr": 6, "parent_device_ipv6": 7,
    },
    "VXLANTunnelEndpointRemove": {"node": 1},
    "WireguardEndpointUpdate": {"hostname": 1, "public_key": 2, "interface_ipv4_addr": 3},
    "WireguardEndpointV6Update": {
        "hostname": 1, "public_key_v6": 2, "interface_ipv6_addr": 3,
    },
    "GlobalBGPConfigUpdate": {
        "service_cluster_cidrs": 1, "service_external_cidrs": 2,
        "service_loadbalancer_cidrs": 3, "local_workload_peering_ip_v4": 4,
        "local_workload_peering_ip_v6": 5,
    },
    "Encapsulation": {
        "ipip_enabled": 1, "vxlan_enabled": 2, "vxlan_enabled_v6": 3, "no_encap_enabled": 4,
    },
    "ServiceUpdate": {
        "name": 1, "namespace": 2, "type": 3, "cluster_ips": 4, "loadbalancer_ip": 5,
        "external_ips": 6, "ports": 7, "loadbalancer_ingress_ips": 8,
    },
    "ProcessStatusUpdate": {"iso_timestamp": 1, "uptime": 2},
    "WorkloadEndpointStatusUpdate": {"id": 1, "status": 2, "endpoint": 3},
    "HostEndpointStatusUpdate": {"id": 1, "status": 2},
    "EndpointStatus": {"status": 1},
    "WireguardStatusUpdate": {"public_key": 1, "ip_version": 2},
    "Rule": {
        "action": 1, "ip_version": 2, "protocol": 3, "src_net": 4, "src_ports": 5,
        "dst_net": 6, "dst_ports": 7, "icmp_type": 8, "icmp_type_code": 9,
        "src_ip_set_ids": 10, "dst_ip_set_ids": 11, "src_named_port_ip_set_ids": 12,
        "dst_named_port_ip_set_ids": 13, "dst_ip_port_set_ids": 15, "not_protocol": 102,
        "not_src_net": 103, "not_src_ports": 104, "not_dst_net": 105, "not_dst_ports": 106,
        "not_icmp_type": 107, "not_icmp_type_code": 108, "not_src_ip_set_ids": 109,
        "not_dst_ip_set_ids": 110, "not_src_named_port_ip_set_ids": 112,
        "not_dst_named_port_ip_set_ids": 113, "original_src_selector": 114,
        "original_dst_selector": 115, "original_src_namespace_selector": 116,
        "original_dst_namespace_selector": 117, "original_not_src_selector": 118,
        "original_not_dst_selector": 119, "src_service_account_match": 120,
        "dst_service_account_match": 121, "http_match": 122, "metadata": 123,
        "original_dst_service": 130, "original_dst_service_namespace": 131,
        "original_src_service": 132, "original_src_service_namespace": 133, "rule_id": 201,
    },
    "Protocol": {"number": 1, "name": 2},
    "PortRange": {"first": 1, "last": 2},
    "IcmpTypeAndCode": {"type": 1, "code": 2},
}

ROUTE_TYPE_BITS = {
    "CIDR_INFO": 0, "REMOTE_WORKLOAD": 1, "REMOTE_HOST": 2, "LOCAL_WORKLOAD": 4,
    "LOCAL_HOST": 8, "REMOTE_TUNNEL": 16, "LOCAL_TUNNEL": 32,
}


def test_felix_field_numbers_match_reference() -> None:
    mismatches = []
    for message, fields in FELIX_FIELDS.items():
        descriptor = fb.DESCRIPTOR.message_types_by_name[message]
        for name, number in fields.items():
            field = descriptor.fields_by_name.get(name)
            if field is None or field.number != number:
                got = None if field is None else field.number
                mismatches.append(f"{message}.{name}: want {number}, have {got}")
    assert not mismatches, "\n".join(mismatches)


def test_felix_package_and_route_type_bits() -> None:
    assert fb.DESCRIPTOR.package == "felix"
    assert {v.name: v.number for v in fb.RouteType.DESCRIPTOR.values} == ROUTE_TYPE_BITS
    assert fb.DESCRIPTOR.services_by_name["PolicySync"].full_name == "felix.PolicySync"


def test_bitmask_route_types_survive_the_wire() -> None:
    msg = fb.ToDataplane(
        sequence_number=7,
        route_update=fb.RouteUpdate(types=fb.REMOTE_WORKLOAD | fb.REMOTE_TUNNEL, dst="10.0.0.0/26"),
    )
    decoded = fb.ToDataplane.FromString(msg.SerializeToString())
    assert decoded.route_update.types == 17
    assert decoded.WhichOneof("payload") == "route_update"
