/* crc16: the hash slot of a Redis Cluster key (CRC16-CCITT/XMODEM of the key, or of its
 * hash tag: the text between the first '{' and the next '}' when that is not empty),
 * modulo 16384. Pure; used by redis_cluster.c to route each single-key command. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#define CLUSTER_SLOTS 16384

/* CRC16-CCITT (polynomial 0x1021, initial 0, as Redis Cluster): "123456789" is 0x31C3. */
uint16_t crc16(const char *buf, size_t len);

/* The slot (0..16383) of key[0..len). */
unsigned crc16_key_slot(const char *key, size_t len);
