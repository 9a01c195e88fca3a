export * from './common.ts';
export * from './gpubackend.ts';
export * from './tenant.ts';
export * from './apikey.ts';
import { ApiKeyDefinition } from './apikey.ts';
import { GpuBackendDefinition } from './gpubackend.ts';
import { TenantDefinition } from './tenant.ts';

export const KINDS = [GpuBackendDefinition, TenantDefinition, ApiKeyDefinition] as const;
export * from './duration.ts';
