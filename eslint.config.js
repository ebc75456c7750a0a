// @ts-check
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['**/dist/**', 'node_modules/**', '.forky/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: {
      globals: {
        process: 'readonly',
        console: 'readonly',
        Buffer: 'readonly',
        setTimeout: 'readonly',
        clearTimeout: 'readonly',
        setImmediate: 'readonly',
        performance: 'readonly',
        TextEncoder: 'readonly',
        TextDecoder: 'readonly',
        NodeJS: 'readonly',
      },
    },
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      'no-console': 'error',
      // A lib is used through its public index only.
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            { group: ['@forky/*/*'], message: 'import a lib through its index (@forky/<lib>)' },
            { group: ['**/libs/*/src/**', '**/services/*/src/**'], message: 'no deep imports into another package' },
          ],
        },
      ],
    },
  },
  {
    files: ['test/**', 'bench/**'],
    rules: {
      'no-console': 'off',
      // Tests may also reach a package's internal face (its internal.ts), and nothing deeper.
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            {
              group: ['@forky/*/*', '!@forky/*/internal'],
              message: 'import a package through its index, or its internal face (@forky/<pkg>/internal)',
            },
            { group: ['**/libs/*/src/**', '**/services/*/src/**'], message: 'no deep imports into another package' },
          ],
        },
      ],
    },
  },
);
